"""What an action kind is: its label, help with an example, parameters, extra checks and how it acts.

Each kind is one small class registered by name in ACTION_KINDS (lifecycle.py, data.py,
notify.py). The policy admin lists their help, PolicyAction.clean() validates with them and
the trigger runs them: adding a kind is one class plus its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from experiments.actors import Actor
from experiments.models import Experiment
from experiments.recipes.schema import ConfigError, Param, validate_config


class ActionFailed(Exception):
    """An action could not be carried out; the message says why."""


@dataclass(frozen=True)
class ActionContext:
    """What an action may use of the trigger that runs it.

    The trigger's own records stay with the policies layer: an action asks through these
    callables, so the kinds import nothing of the policy models that validate with them.
    """

    experiment: Experiment | None
    actor: Actor
    reason: str
    params: dict[str, Any]
    policy_name: str
    # The trigger as the websocket payload (what notifications send).
    trigger_payload: Callable[[], dict[str, Any]]
    # The result of an earlier, succeeded action of the same trigger, by kind.
    earlier_result: Callable[[str], dict[str, Any] | None]
    # Whether an enabled canary policy covers the experiment (promote deploys at once otherwise).
    canary_applies: Callable[[Experiment], bool]
    # Judge a candidate again against production as it is now; the reason it lost, or None.
    # Holds a lock until the caller's transaction ends (call it inside one).
    rejudge: Callable[[Experiment], str | None] = lambda experiment: None

    def require_experiment(self, kind: str) -> Experiment:
        """Return the trigger's experiment, or fail: this kind acts on one."""
        if self.experiment is None:
            raise ActionFailed(f"{kind} needs an experiment")
        return self.experiment


class ActionKind:
    """One kind of action. Subclasses set name, label, help (with a JSON example) and params."""

    name: ClassVar[str]
    label: ClassVar[str]
    help: ClassVar[str]
    # Scalar parameters, validated like recipe parameters.
    params: ClassVar[tuple[Param, ...]] = ()
    # Parameters that are JSON objects (config overrides), passed through as dicts.
    object_params: ClassVar[tuple[str, ...]] = ()

    def check(self, clean: dict[str, Any]) -> dict[str, str]:
        """Return {parameter: message} for what the typed checks cannot see (formats, lists)."""
        return {}

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Carry the action out through the same services the buttons use; return what it did."""
        raise NotImplementedError


ACTION_KINDS: dict[str, ActionKind] = {}

K = TypeVar("K", bound=type[ActionKind])


def action_kind_register(cls: K) -> K:
    """Register an action kind under its name (a second kind of the same name is a bug)."""
    if cls.name in ACTION_KINDS:
        raise ValueError(f"action kind {cls.name!r} is registered twice")
    ACTION_KINDS[cls.name] = cls()
    return cls


def validate_action_params(kind: str, params: Any) -> dict[str, str]:
    """Return {parameter: message} for what is wrong with an action's parameters."""
    unit = ACTION_KINDS.get(kind)
    if unit is None:
        return {"kind": f"unknown action {kind!r} (known: {', '.join(sorted(ACTION_KINDS))})"}
    if not isinstance(params, dict):
        return {"params": "must be a JSON object, e.g. {}"}
    scalars = {k: v for k, v in params.items() if k not in unit.object_params}
    errors: dict[str, str] = {}
    try:
        clean = validate_config(unit.params, scalars)
    except ConfigError as exc:
        errors.update(exc.errors)
        clean = {}
    for name in unit.object_params:
        if name in params and not isinstance(params[name], dict):
            errors[name] = "must be a JSON object"
    if not errors:
        errors.update(unit.check(dict(clean)))
    return errors


def clean_action_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return params with defaults filled in (call validate_action_params first)."""
    unit = ACTION_KINDS[kind]
    scalars = {k: v for k, v in params.items() if k not in unit.object_params}
    clean: dict[str, Any] = dict(validate_config(unit.params, scalars))
    for name in unit.object_params:
        clean[name] = dict(params.get(name) or {})
    return clean
