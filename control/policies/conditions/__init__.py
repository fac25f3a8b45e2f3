"""Policy conditions as data: one unit per kind, registered by name (see base.py).

Importing the package registers every built-in kind, in the order the admin lists them.
"""

# Import order is registration order, which is the order of the kinds in the admin and in
# PolicyCondition.kind's choices (a change would be a migration).
# isort: off
from control.policies.conditions import metrics  # noqa: F401
from control.policies.conditions import retrain  # noqa: F401
from control.policies.conditions import capacity  # noqa: F401

# isort: on
from control.policies.conditions.base import (
    AGGREGATES,
    BETTER,
    CONDITION_KINDS,
    OPERATORS,
    SERVING_METRICS,
    ConditionKind,
    ConditionKindUnit,
    ConditionResult,
    ConditionSpec,
    EvaluationContext,
    Point,
    condition_kind_register,
    condition_shortfall,
    default_better,
    evaluate_all,
    evaluate_condition,
    validate_condition,
    validate_metric_declared,
    validate_serving_condition,
)

__all__ = [
    "AGGREGATES",
    "BETTER",
    "CONDITION_KINDS",
    "OPERATORS",
    "SERVING_METRICS",
    "ConditionKind",
    "ConditionKindUnit",
    "ConditionResult",
    "ConditionSpec",
    "EvaluationContext",
    "Point",
    "condition_kind_register",
    "condition_shortfall",
    "default_better",
    "evaluate_all",
    "evaluate_condition",
    "validate_condition",
    "validate_metric_declared",
    "validate_serving_condition",
]
