"""Recipe plug-ins for tests: modules written to a folder, entry points as dist-info, the example installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "recipe-plugin"
EXAMPLE_MODULE = EXAMPLE / "src" / "crucible_spiral" / "__init__.py"

GOOD_RECIPE = """
from experiments.recipes import Metric, Param, RecipeResult


class Recipe:
    name = {name!r}
    summary = "A plug-in written by a test."
    params = (Param("epochs", int, 2, "Passes.", 1, 10), Param("seed", int, 0, "Seed.", 0, 100))
    metrics = (Metric("loss", "lower"), Metric("score", "higher"))

    def train(self, ctx, config):
        for step in range(1, int(config["epochs"]) + 1):
            ctx.log("loss", step, 1.0 / step)
        return RecipeResult(final_metrics={{"loss": 1.0 / int(config["epochs"])}}, steps=int(config["epochs"]))


RECIPE = Recipe()
"""


def write_module(folder: Path, module: str, source: str) -> Path:
    """Write a plug-in module into folder (which the test puts on sys.path)."""
    path = folder / f"{module}.py"
    path.write_text(textwrap.dedent(source))
    return path


def write_recipe(folder: Path, module: str, name: str) -> str:
    """Write a working plug-in recipe called name; return its module:OBJECT reference."""
    write_module(folder, module, GOOD_RECIPE.format(name=name))
    return f"{module}:RECIPE"


def write_entry_points(folder: Path, dist: str, entries: dict[str, str], version: str = "1.0") -> None:
    """Declare entry points in folder as an installed distribution would (a dist-info directory)."""
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {ref}\n" for name, ref in entries.items())
    (info / "entry_points.txt").write_text(f"[crucible_control.recipes]\n{lines}")


def install_example(target: Path, scratch: Path) -> None:
    """pip-install examples/recipe-plugin into target, offline (a copy is built: the repo stays clean)."""
    source = scratch / "recipe-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
            "--no-index", "--target", str(target), str(source),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
