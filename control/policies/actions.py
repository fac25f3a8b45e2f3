"""The actions a policy can take and the parameters each accepts (validated, never executed here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from experiments.choices import PriorityClass
from experiments.recipes.schema import ConfigError, Param, validate_config


@dataclass(frozen=True)
class ActionKindSpec:
    """An action kind: its label, help with an example, scalar parameters and object parameters."""

    label: str
    help: str
    params: tuple[Param, ...] = ()
    object_params: tuple[str, ...] = field(default_factory=tuple)


_PRIORITY = Param(
    "priority_class", str, "", "Scheduling class of the new experiment.", choices=("", *PriorityClass.values)
)

ACTION_KINDS: dict[str, ActionKindSpec] = {
    "retrain": ActionKindSpec(
        "Retrain (child experiment)",
        "Queue a child of the experiment with the same recipe (and the dataset an earlier "
        'curate_dataset action made). {"config_overrides": {"epochs": 40}, "priority_class": "realtime"}',
        (_PRIORITY,),
        ("config_overrides",),
    ),
    "queue_experiment": ActionKindSpec(
        "Queue a new experiment",
        'Queue a fresh experiment. {"recipe": "digits", "config": {"epochs": 20}, "priority_class": "interactive"}',
        (Param("recipe", str, "", "Recipe; blank takes the trigger experiment's."), _PRIORITY),
        ("config",),
    ),
    "cancel": ActionKindSpec("Cancel", "Cancel the experiment. No parameters."),
    "requeue": ActionKindSpec(
        "Requeue with changed hyper-parameters",
        "Stop the run and queue it again from its last good checkpoint, learning rate scaled. "
        '{"lr_factor": 0.5, "config_overrides": {"inject_nan_at_step": -1}}',
        (Param("lr_factor", float, 0.5, "Multiply the learning rate by this.", 0.0001, 10.0),),
        ("config_overrides",),
    ),
    "hold": ActionKindSpec(
        "Hold for review", "Move an evaluating experiment to completed (held). No parameters."
    ),
    "promote": ActionKindSpec(
        "Promote",
        "Promote the experiment; with no canary policy in scope it is deployed at once. No parameters.",
    ),
    "rollback": ActionKindSpec(
        "Roll back", "Roll back the deployment and restore the previous production version."
    ),
    "curate_dataset": ActionKindSpec(
        "Curate a dataset of hard examples",
        "Collect served examples the model got wrong (by feedback) or answered with low confidence "
        "into a new dataset version; a retrain after it in the same policy trains on it. "
        '{"strategy": "hard_examples", "count": 1000, "max_confidence": 0.6}',
        (
            Param("strategy", str, "hard_examples", "How rows are chosen.", choices=("hard_examples",)),
            Param("count", int, 1000, "At most this many rows, newest first.", 1, 100_000),
            Param("max_confidence", float, 0.6, "Below this top-class probability a row is hard.", 0.0, 1.0),
        ),
    ),
    "notify_email": ActionKindSpec(
        "Notify by email",
        'Send an email through Django\'s mail backend. {"to": "ml-team@example.com, lead@example.com"}',
        (
            Param("to", str, "", "Comma-separated addresses."),
            Param("subject", str, "", "Subject; blank: a default."),
        ),
    ),
    "notify_webhook": ActionKindSpec(
        "Notify by webhook",
        'POST the trigger as JSON to a URL. {"url": "http://127.0.0.1:9000/hook"}',
        (Param("url", str, "", "http(s) URL to POST to."),),
    ),
}


def validate_action_params(kind: str, params: Any) -> dict[str, str]:
    """Return {parameter: message} for what is wrong with an action's parameters."""
    spec = ACTION_KINDS.get(kind)
    if spec is None:
        return {"kind": f"unknown action {kind!r} (known: {', '.join(sorted(ACTION_KINDS))})"}
    if not isinstance(params, dict):
        return {"params": "must be a JSON object, e.g. {}"}
    scalars = {k: v for k, v in params.items() if k not in spec.object_params}
    errors: dict[str, str] = {}
    try:
        clean = validate_config(spec.params, scalars)
    except ConfigError as exc:
        errors.update(exc.errors)
        clean = {}
    for name in spec.object_params:
        if name in params and not isinstance(params[name], dict):
            errors[name] = "must be a JSON object"
    if kind == "notify_email" and not errors:
        addresses = [a.strip() for a in str(clean.get("to", "")).split(",") if a.strip()]
        if not addresses or any("@" not in a for a in addresses):
            errors["to"] = "give one or more email addresses, comma-separated"
    if kind == "notify_webhook" and not errors:
        url = urlsplit(str(clean.get("url", "")))
        if url.scheme not in ("http", "https") or not url.netloc:
            errors["url"] = "give an http:// or https:// URL"
    return errors


def clean_action_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return params with defaults filled in (call validate_action_params first)."""
    spec = ACTION_KINDS[kind]
    scalars = {k: v for k, v in params.items() if k not in spec.object_params}
    clean: dict[str, Any] = dict(validate_config(spec.params, scalars))
    for name in spec.object_params:
        clean[name] = dict(params.get(name) or {})
    return clean
