"""The actions a policy can take: one unit per kind, registered by name (see base.py).

Importing the package registers every built-in kind, in the order the admin lists them.
"""

# Import order is registration order, which is the order of the kinds in the admin and in
# PolicyAction.kind's choices (a change would be a migration).
# isort: off
from control.policies.actions import lifecycle  # noqa: F401
from control.policies.actions import data  # noqa: F401
from control.policies.actions import notify  # noqa: F401

# isort: on
from control.policies.actions.base import (
    ACTION_KINDS,
    ActionContext,
    ActionFailed,
    ActionKind,
    action_kind_register,
    clean_action_params,
    validate_action_params,
)

__all__ = [
    "ACTION_KINDS",
    "ActionContext",
    "ActionFailed",
    "ActionKind",
    "action_kind_register",
    "clean_action_params",
    "validate_action_params",
]
