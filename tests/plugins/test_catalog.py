"""The catalog merges built-ins and plug-ins; each broken plug-in is refused on its own, with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.recipes import RECIPES, ConfigError, get_spec
from experiments.recipes.catalog import BUILTINS
from experiments.recipes.cli import main

from .helpers import ROOT, write_entry_points, write_module, write_recipe


def _refusals() -> dict[str, str]:
    return {problem.ref: problem.message for problem in RECIPES.problems()}


def test_a_crucible_recipes_module_joins_the_catalog_with_its_source(plugin_dir: Path) -> None:
    ref = write_recipe(plugin_dir, "team_recipe", "team")
    RECIPES.configure(ref)

    spec = get_spec("team")
    assert spec.source == "CRUCIBLE_RECIPES"
    assert spec.metrics == ("loss", "score")
    assert spec.better == {"loss": "lower", "score": "higher"}
    assert not spec.servable
    assert {"digits", "charlm", "distill", "team"} <= set(RECIPES)
    assert RECIPES.problems() == []


def test_an_entry_point_joins_the_catalog_named_by_its_distribution(plugin_dir: Path) -> None:
    ref = write_recipe(plugin_dir, "packaged_recipe", "packaged")
    write_entry_points(plugin_dir, "team-recipes", {"packaged": ref}, version="2.3")
    RECIPES.reload()

    assert get_spec("packaged").source == "entry point 'packaged' of team-recipes 2.3"
    result = get_spec("packaged").load().train  # the object the entry point names
    assert callable(result)


def test_a_plugin_that_fails_to_import_is_refused_and_the_others_still_work(plugin_dir: Path) -> None:
    write_module(plugin_dir, "broken_recipe", "import a_module_nobody_installed\n")
    good = write_recipe(plugin_dir, "fine_recipe", "fine")
    RECIPES.configure(f"broken_recipe:RECIPE,{good}")

    assert "fine" in RECIPES and "digits" in RECIPES
    message = _refusals()["broken_recipe:RECIPE"]
    assert "import failed: ModuleNotFoundError: No module named 'a_module_nobody_installed'" in message
    assert "broken_recipe.py:1" in message  # where, in the plug-in's own file


def test_a_plugin_raising_value_error_at_import_is_an_import_failure_not_a_bad_reference(
    plugin_dir: Path,
) -> None:
    write_module(plugin_dir, "picky", "raise ValueError('CUDA_HOME is not set')\n")
    RECIPES.configure("picky:RECIPE")

    assert _refusals()["picky:RECIPE"].startswith("import failed: ValueError: CUDA_HOME is not set (at ")


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("no_colon_here", "bad reference: 'no_colon_here' is not of the form module:OBJECT"),
        ("fine_recipe:MISSING", "bad reference: module 'fine_recipe' has no attribute 'MISSING'"),
        (":RECIPE", "is not of the form module:OBJECT"),
    ],
)
def test_a_bad_reference_is_refused_with_what_is_wrong(plugin_dir: Path, ref: str, needle: str) -> None:
    write_recipe(plugin_dir, "fine_recipe", "fine")
    RECIPES.configure(ref)

    assert needle in _refusals()[ref]
    assert set(RECIPES) == set(BUILTINS)


def test_a_bad_entry_point_value_is_refused_naming_the_entry_point(plugin_dir: Path) -> None:
    write_entry_points(plugin_dir, "sloppy", {"sloppy": "sloppy_module"})
    RECIPES.reload()

    (problem,) = RECIPES.problems()
    assert problem.source == "entry point 'sloppy' of sloppy 1.0"
    assert "bad reference: 'sloppy_module' is not of the form module:OBJECT" in problem.message
    with pytest.raises(ConfigError) as refused:
        get_spec("sloppy")
    assert (
        "recipe 'sloppy' is not available: entry point 'sloppy' of sloppy 1.0"
        in refused.value.errors["recipe"]
    )


BAD_PARAMS = {
    "a default outside its range": ('Param("epochs", int, 0, "", 1, 10)', "parameter 'epochs': default 0 must be at least 1"),
    "a default of the wrong type": ('Param("lr", float, "fast")', "parameter 'lr': default 'fast' must be a number"),
    "an unsupported type": ('Param("shape", list, [])', "parameter 'shape': type must be int, float, str or bool"),
    "a name twice": ('Param("a", int, 1), Param("a", int, 2)', "parameter 'a' is declared twice"),
    "not a Param": ('{"name": "epochs"}', "params[0] is a dict, not a Param"),
    "a name that is no identifier": ('Param("learning rate", float, 0.1)', "name 'learning rate' must be a Python identifier"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_a_bad_parameter_declaration_is_refused_naming_the_parameter(plugin_dir: Path, case: str) -> None:
    declaration, needle = BAD_PARAMS[case]
    write_module(
        plugin_dir,
        "badparams",
        f"""
        from experiments.recipes import Param

        class Recipe:
            name = "badparams"
            summary = "declares its parameters wrongly"
            params = ({declaration},)
            def train(self, ctx, config): ...

        RECIPE = Recipe()
        """,
    )
    RECIPES.configure("badparams:RECIPE")

    message = _refusals()["badparams:RECIPE"]
    assert message.startswith("bad parameter declaration: ")
    assert needle in message
    assert "badparams" not in RECIPES


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('name = "Not A Name"', "recipe name 'Not A Name' must be 1-64 lowercase letters"),
        ('name = "nodo"\n            params = ()', "it has no train(ctx, config) method"),
        (
            'name = "badmetric"\n            params = ()\n            metrics = (Metric("acc", "up"),)\n'
            "            def train(self, ctx, config): ...",
            "bad metrics declaration: metric 'acc': better must be 'higher' or 'lower', not 'up'",
        ),
    ],
)
def test_a_recipe_object_that_is_not_usable_is_refused(plugin_dir: Path, body: str, needle: str) -> None:
    write_module(
        plugin_dir,
        "odd_recipe",
        f"""
        from experiments.recipes import Metric

        class Recipe:
            {body}

        RECIPE = Recipe()
        """,
    )
    RECIPES.configure("odd_recipe:RECIPE")

    assert needle in _refusals()["odd_recipe:RECIPE"]


def test_a_plugin_may_not_take_a_built_in_name(plugin_dir: Path) -> None:
    ref = write_recipe(plugin_dir, "impostor", "digits")
    RECIPES.configure(ref)

    assert get_spec("digits").source == "built-in"
    assert _refusals()[ref] == "recipe name 'digits' clashes with the built-in recipe 'digits': refused"


def test_two_plugins_claiming_one_name_are_both_refused_each_naming_the_other(plugin_dir: Path) -> None:
    first = write_recipe(plugin_dir, "team_a", "shared")
    second = write_recipe(plugin_dir, "team_b", "shared")
    write_entry_points(plugin_dir, "team-a", {"shared": first})
    RECIPES.configure(second)

    refusals = _refusals()
    assert "shared" not in RECIPES
    assert refusals[second] == (
        "recipe name 'shared' clashes with entry point 'shared' of team-a 1.0 (team_a:RECIPE): both refused"
    )
    assert (
        refusals[first] == "recipe name 'shared' clashes with CRUCIBLE_RECIPES (team_b:RECIPE): both refused"
    )


def test_the_same_plugin_installed_and_listed_counts_once(plugin_dir: Path) -> None:
    ref = write_recipe(plugin_dir, "twice", "twice")
    write_entry_points(plugin_dir, "twice", {"twice": ref})
    RECIPES.configure(ref)

    assert "twice" in RECIPES and RECIPES.problems() == []


def test_an_unknown_recipe_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as refused:
        get_spec("nope")
    assert (
        refused.value.errors["recipe"]
        == "unknown recipe 'nope' (known: charlm, digits, distill, dpo, grpo, script)"
    )


def test_list_shows_each_recipe_with_its_source_and_the_refused_plugins(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_recipe(plugin_dir, "listed", "listed")
    RECIPES.configure(f"{good},missing_module:RECIPE")

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "digits [built-in]: " in out
    assert "listed [CRUCIBLE_RECIPES]: A plug-in written by a test." in out
    assert "  metrics: loss (lower is better), score (higher is better)" in out
    assert "REFUSED CRUCIBLE_RECIPES (missing_module:RECIPE): import failed: ModuleNotFoundError" in out

    assert main(["list", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    listed = next(item for item in lines if item.get("name") == "listed")
    assert listed["source"] == "CRUCIBLE_RECIPES" and listed["servable"] is False
    (problem,) = (item["problem"] for item in lines if "problem" in item)
    assert problem["ref"] == "missing_module:RECIPE"


def test_the_cli_alone_reads_crucible_recipes_and_entry_points_from_the_environment(tmp_path: Path) -> None:
    ref = write_recipe(tmp_path, "cli_recipe", "clirecipe")
    write_recipe(tmp_path, "cli_packaged", "clipackaged")
    write_entry_points(tmp_path, "cli-packaged", {"clipackaged": "cli_packaged:RECIPE"})
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "CRUCIBLE_RECIPES": f"{ref},gone:X"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-m", "experiments.recipes", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "clirecipe [CRUCIBLE_RECIPES]" in done.stdout
    assert "clipackaged [entry point 'clipackaged' of cli-packaged 1.0]" in done.stdout
    assert "REFUSED CRUCIBLE_RECIPES (gone:X)" in done.stdout
    assert "recipe plug-in refused: CRUCIBLE_RECIPES (gone:X)" in done.stderr  # the log

    run = subprocess.run(
        [sys.executable, "-m", "experiments.recipes", "run", "clirecipe", "--set", "epochs=3"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["summary"]["steps"] == 3
    assert "django" not in run.stderr.lower()
