"""Declared recipe parameters and the validation of a config against them (no Django, no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ParamValue = int | float | str | bool


@dataclass(frozen=True)
class Param:
    """One hyper-parameter a recipe accepts: its type, default and allowed range."""

    name: str
    type: type[int] | type[float] | type[str] | type[bool]
    default: ParamValue
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able description (for forms, the API and the CLI's --help)."""
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "choices": list(self.choices),
        }

    def coerce(self, raw: Any) -> ParamValue:
        """Return raw converted to this parameter's type, or raise ValueError with a message."""
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in {"true", "1", "yes", "on"}:
                return True
            if isinstance(raw, str) and raw.strip().lower() in {"false", "0", "no", "off"}:
                return False
            raise ValueError("must be true or false")
        if self.type is int:
            # bool is an int subclass in Python; a JSON true is not a batch size.
            if isinstance(raw, bool):
                raise ValueError("must be an integer")
            if isinstance(raw, int):
                value: ParamValue = raw
            elif isinstance(raw, float) and raw.is_integer():
                value = int(raw)
            elif isinstance(raw, str):
                try:
                    value = int(raw.strip())
                except ValueError:
                    raise ValueError("must be an integer") from None
            else:
                raise ValueError("must be an integer")
        elif self.type is float:
            if isinstance(raw, bool):
                raise ValueError("must be a number")
            if isinstance(raw, int | float):
                value = float(raw)
            elif isinstance(raw, str):
                try:
                    value = float(raw.strip())
                except ValueError:
                    raise ValueError("must be a number") from None
            else:
                raise ValueError("must be a number")
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
        else:
            if not isinstance(raw, str):
                raise ValueError("must be a string")
            value = raw
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of: {', '.join(self.choices)}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"must be at least {_fmt(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"must be at most {_fmt(self.maximum)}")
        return value


@dataclass(frozen=True)
class DatasetParam(Param):
    """A curated dataset version named by its id (0: none), never by a file path.

    Whoever runs the recipe resolves the id to a file (RunContext.dataset_path): a worker only
    under its data folder, so a config can never point training or serving at a server file.
    """

    type: type[int] | type[float] | type[str] | type[bool] = int
    default: ParamValue = 0
    minimum: float | None = 0
    maximum: float | None = 2**31 - 1

    def coerce(self, raw: Any) -> ParamValue:
        """Return the dataset id, or raise ValueError saying to name a curated dataset by id."""
        try:
            return super().coerce(raw)
        except ValueError:
            raise ValueError(DATASET_BY_ID) from None


DATASET_BY_ID = "refer to a curated dataset by id (a whole number; 0 for none), not a file path"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


class ConfigError(ValueError):
    """A config was refused; errors maps each offending key to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in errors.items()))
        self.errors = errors


def validate_config(params: tuple[Param, ...], config: dict[str, Any]) -> dict[str, ParamValue]:
    """Return the config with defaults filled in, or raise ConfigError keyed by parameter."""
    if not isinstance(config, dict):
        raise ConfigError({"config": "must be a JSON object"})
    by_name = {p.name: p for p in params}
    errors: dict[str, str] = {}
    clean: dict[str, ParamValue] = {}
    for key in config:
        if key not in by_name:
            known = ", ".join(sorted(by_name))
            errors[key] = f"unknown parameter (known: {known})"
    for param in params:
        if param.name not in config:
            clean[param.name] = param.default
            continue
        try:
            clean[param.name] = param.coerce(config[param.name])
        except ValueError as exc:
            errors[param.name] = str(exc)
    if errors:
        raise ConfigError(errors)
    return clean


BETTER = ("higher", "lower")


@dataclass(frozen=True)
class Metric:
    """One metric a recipe logs, and which way is better (policies compare and pick "best" by it)."""

    name: str
    better: str = "higher"  # "higher" (accuracy, f1) or "lower" (loss, error)
    help: str = ""


def metric_problems(metrics: Any) -> list[str]:
    """Return what is wrong with a metric declaration (Metric objects or plain names), or []."""
    if not isinstance(metrics, tuple | list):
        return [f"metrics must be a tuple of Metric or names, not {type(metrics).__name__}"]
    problems: list[str] = []
    seen: set[str] = set()
    for item in metrics:
        name = item.name if isinstance(item, Metric) else item
        if not isinstance(name, str) or not name.strip():
            problems.append(f"metric {item!r}: must be a Metric or a non-empty name")
            continue
        if isinstance(item, Metric) and item.better not in BETTER:
            problems.append(f"metric {name!r}: better must be 'higher' or 'lower', not {item.better!r}")
        if name in seen:
            problems.append(f"metric {name!r} is declared twice")
        seen.add(name)
    return problems


PARAM_TYPES = (int, float, str, bool)


def param_problems(params: Any) -> list[str]:
    """Return what is wrong with a parameter declaration (a plug-in's), or [] when it is sound.

    Each Param must have a name, one of the four types, and a default its own coerce() accepts:
    a config made of nothing but defaults must validate.
    """
    if not isinstance(params, tuple | list):
        return [f"params must be a tuple of Param, not {type(params).__name__}"]
    problems: list[str] = []
    seen: set[str] = set()
    for index, param in enumerate(params):
        if not isinstance(param, Param):
            problems.append(f"params[{index}] is a {type(param).__name__}, not a Param")
            continue
        label = f"parameter {param.name!r}"
        if not isinstance(param.name, str) or not param.name.isidentifier():
            problems.append(f"params[{index}]: name {param.name!r} must be a Python identifier")
            continue
        if param.name in seen:
            problems.append(f"{label} is declared twice")
        seen.add(param.name)
        if param.type not in PARAM_TYPES:
            problems.append(f"{label}: type must be int, float, str or bool, not {param.type!r}")
            continue
        if param.minimum is not None and param.maximum is not None and param.minimum > param.maximum:
            problems.append(f"{label}: minimum {param.minimum} is above maximum {param.maximum}")
            continue
        try:
            param.coerce(param.default)
        except ValueError as exc:
            problems.append(f"{label}: default {param.default!r} {exc}")
    return problems
