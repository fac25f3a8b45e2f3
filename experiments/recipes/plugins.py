"""Recipes from outside this repository: installed entry points and CRUCIBLE_RECIPES references.

An installed package declares its recipes in the entry-point group `crucible_control.recipes`
(`name = "module:OBJECT"`); a module that is not packaged is named in the CRUCIBLE_RECIPES
environment variable (or setting), comma-separated `module:OBJECT`. OBJECT is a recipe: an
object (or a class, instantiated without arguments) with name, summary, params, train() and
optionally metrics, constraints, evaluate_checkpoint() and load_predictor() (serving).

Each plug-in is checked on its own: one that fails to import or declares bad parameters becomes a
PluginProblem with a message naming it, and every other recipe stays usable.
"""

from __future__ import annotations

import importlib.metadata
import re
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .outputs import stage_name_error
from .schema import Metric, metric_problems, param_problems
from .spec import EVAL_PREFIX, BadReference, RecipeSpec, import_object, recipe_instance

ENTRY_POINT_GROUP = "crucible_control.recipes"
ENV_VAR = "CRUCIBLE_RECIPES"
# Names go into URLs, model names (64 characters) and policy scopes.
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class PluginProblem:
    """A plug-in the catalog refused: where it was declared, what it names, and why."""

    source: str
    ref: str
    message: str
    name: str = ""  # the recipe name it claimed, when it got that far

    def __str__(self) -> str:
        return f"{self.source} ({self.ref}): {self.message}"


class PluginError(ValueError):
    """A plug-in object that is not a usable recipe; the message says what to fix."""


@dataclass(frozen=True)
class Declared:
    """One plug-in reference: where it was declared, the module:OBJECT, and the name it must have."""

    source: str
    ref: str
    name: str = ""  # the entry point's name; "" for a CRUCIBLE_RECIPES reference


def parse_refs(value: str | Iterable[str] | None) -> list[str]:
    """Return the module:OBJECT references of a comma-separated string (or a list), blanks dropped."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


def declared_entry_points() -> list[Declared]:
    """Return the recipes installed packages declare, in a stable order (name, then distribution)."""
    found: list[Declared] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_label = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown package"
        found.append(Declared(f"entry point {ep.name!r} of {dist_label}", ep.value, ep.name))
    return sorted(found, key=lambda d: (d.name, d.source))


def declared_refs(refs: Sequence[str]) -> list[Declared]:
    """Return CRUCIBLE_RECIPES references as declarations."""
    return [Declared(ENV_VAR, ref) for ref in refs]


def _metrics(obj: Any, attribute: str = "metrics") -> tuple[tuple[str, ...], dict[str, str]]:
    declared = getattr(obj, attribute, ())
    problems = metric_problems(declared)
    if problems:
        raise PluginError(f"bad {attribute} declaration: " + "; ".join(problems))
    names: list[str] = []
    better: dict[str, str] = {}
    for item in declared:
        if isinstance(item, Metric):
            names.append(item.name)
            better[item.name] = item.better
        else:
            names.append(item)
    return tuple(names), better


def spec_from_object(obj: Any, *, entry: str, source: str, expected_name: str = "") -> RecipeSpec:
    """Return the catalog entry of a plug-in recipe object, or raise PluginError saying what is wrong."""
    recipe = recipe_instance(obj)
    name = getattr(recipe, "name", expected_name)
    if not name:
        raise PluginError("it has no name (a recipe object has name, summary, params and train)")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PluginError(
            f"recipe name {name!r} must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter"
        )
    if expected_name and name != expected_name:
        raise PluginError(f"the entry point is named {expected_name!r} but the recipe calls itself {name!r}")
    if not callable(getattr(recipe, "train", None)):
        raise PluginError("it has no train(ctx, config) method")
    summary = getattr(recipe, "summary", "")
    if not isinstance(summary, str):
        raise PluginError(f"summary must be a string, not {type(summary).__name__}")
    if not hasattr(recipe, "params"):
        raise PluginError("it declares no params (a tuple of Param; empty for none)")
    params = recipe.params
    problems = param_problems(params)
    if problems:
        raise PluginError("bad parameter declaration: " + "; ".join(problems))
    constraints = getattr(recipe, "constraints", ())
    if not isinstance(constraints, tuple | list) or not all(callable(c) for c in constraints):
        raise PluginError("constraints must be a tuple of functions config -> {param: message}")
    metrics, better = _metrics(recipe)
    evaluator = ""
    if callable(getattr(recipe, "evaluate_checkpoint", None)) and not isinstance(obj, type):
        evaluator = f"{entry}.evaluate_checkpoint"
    # What its evaluate_checkpoint returns, read by policies as "eval/<name>".
    eval_metrics, eval_better = _metrics(recipe, "eval_metrics")
    better.update({f"{EVAL_PREFIX}{n}": b for n, b in eval_better.items()})
    stages = getattr(recipe, "stages", ())
    if not isinstance(stages, tuple | list) or any(stage_name_error(s) for s in stages):
        raise PluginError("stages must be a tuple of stage names (lowercase letters, digits, '_')")
    return RecipeSpec(
        name=name,
        summary=summary.strip() or f"{name} (no summary)",
        params=tuple(params),
        entry=entry,
        constraints=tuple(constraints),
        metrics=metrics,
        evaluator=evaluator,
        better=better,
        source=source,
        eval_metrics=eval_metrics,
        stages=tuple(stages),
        servable=callable(getattr(recipe, "load_predictor", None)),
    )


_HERE = str(Path(__file__).resolve().parent)


def _plugin_frame(filename: str) -> bool:
    return not filename.startswith("<") and "/importlib/" not in filename and not filename.startswith(_HERE)


def load_declared(declared: Declared) -> RecipeSpec:
    """Import one plug-in and return its spec; raise PluginError with a message for people."""
    try:
        obj = import_object(declared.ref)
    except BadReference as exc:
        raise PluginError(f"bad reference: {exc}") from None
    except Exception as exc:  # an import error is the plug-in's, whatever its class (ValueError too)
        # Where in the plug-in's own code it broke (importlib's frames say nothing to its author).
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _plugin_frame(f.filename)]
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise PluginError(f"import failed: {type(exc).__name__}: {exc}{where}") from None
    try:
        return spec_from_object(obj, entry=declared.ref, source=declared.source, expected_name=declared.name)
    except PluginError:
        raise
    except Exception as exc:  # e.g. the class's constructor raised
        raise PluginError(f"could not be read as a recipe: {type(exc).__name__}: {exc}") from None


def merge(
    builtins: dict[str, RecipeSpec], declared: Sequence[Declared]
) -> tuple[dict[str, RecipeSpec], list[PluginProblem]]:
    """Return the catalog (built-ins, then plug-ins) and the plug-ins it refused.

    A plug-in may not take a built-in's name; two plug-ins claiming one name are both refused
    (neither is the obvious choice). The same module:OBJECT declared twice (installed and listed
    in CRUCIBLE_RECIPES) counts once.
    """
    catalog = dict(builtins)
    problems: list[PluginProblem] = []
    claimed: dict[str, RecipeSpec] = {}
    clashed: set[str] = set()
    seen_refs: set[str] = set()
    for item in declared:
        if item.ref in seen_refs:
            continue
        seen_refs.add(item.ref)
        try:
            spec = load_declared(item)
        except PluginError as exc:
            problems.append(PluginProblem(item.source, item.ref, str(exc), item.name))
            continue
        if spec.name in builtins:
            problems.append(
                PluginProblem(
                    item.source,
                    item.ref,
                    f"recipe name {spec.name!r} clashes with the built-in recipe {spec.name!r}: refused",
                    spec.name,
                )
            )
            continue
        other = claimed.get(spec.name)
        if other is not None:
            problems.append(
                PluginProblem(
                    item.source,
                    item.ref,
                    f"recipe name {spec.name!r} clashes with {other.source} ({other.entry}): both refused",
                    spec.name,
                )
            )
            if spec.name not in clashed:
                problems.append(
                    PluginProblem(
                        other.source,
                        other.entry,
                        f"recipe name {spec.name!r} clashes with {item.source} ({item.ref}): both refused",
                        spec.name,
                    )
                )
            clashed.add(spec.name)
            catalog.pop(spec.name, None)
            continue
        if spec.name in clashed:
            continue
        claimed[spec.name] = spec
        catalog[spec.name] = spec
    return catalog, problems
