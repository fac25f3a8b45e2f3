"""The seed's example policies (and an early stop) as records: loaded by `manage.py demo`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction

from control.policies.authoring import policy_create
from control.policies.conditions import ConditionKind
from control.policies.models import (
    ActionRole,
    ConditionRole,
    GpuPrice,
    Policy,
    PolicyKind,
)

# Descriptions say why a policy exists. Its numbers (thresholds, stages, budgets) live in its
# conditions and settings, and the summary generated from them, so that an edit leaves none stale.
DEMO_POLICIES: list[dict[str, Any]] = [
    {
        "name": "auto_promote",
        "kind": PolicyKind.AUTO_PROMOTE,
        "order": 10,
        "description": "Promote a completed candidate that meets its quality bars and does not regress against "
        "production; otherwise hold it for review.",
        "scope_recipes": ["digits", "distill"],
        "conditions": [
            {"kind": ConditionKind.METRIC, "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": ConditionKind.METRIC, "metric": "f1", "operator": ">", "threshold": 0.85},
            {"kind": ConditionKind.REGRESSION, "metric": "val_loss", "threshold": 0.05},
        ],
        "actions": [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
    },
    {
        "name": "early_stop",
        "kind": PolicyKind.EARLY_STOP,
        "order": 5,
        "description": "A loss that turns NaN stops the run and requeues it from its last good checkpoint with a lower "
        "learning rate (a NaN injected for the demo is cleared).",
        "cooldown_seconds": 30,
        "conditions": [{"kind": ConditionKind.NOT_FINITE, "metric": "loss"}],
        "actions": [
            {"kind": "requeue", "params": {"lr_factor": 0.5, "config_overrides": {"inject_nan_at_step": -1}}}
        ],
    },
    {
        "name": "drift_retrain",
        "kind": PolicyKind.DRIFT_RETRAIN,
        "order": 20,
        "description": "Served inputs that drift away from what the model was trained on call for a new model: "
        "curate the served examples it finds hard into a dataset version and queue an urgent retrain on it. The "
        "age condition and the cooldown keep it from retraining over and over.",
        "cooldown_seconds": 3600,
        "scope_recipes": ["digits"],
        "conditions": [
            {"kind": ConditionKind.DRIFT, "operator": ">", "threshold": 0.15},
            {"kind": ConditionKind.OLDER_THAN, "threshold": 24},
        ],
        "actions": [
            {"kind": "curate_dataset", "params": {"strategy": "hard_examples", "count": 1000}},
            {"kind": "retrain", "params": {"priority_class": "realtime"}},
        ],
    },
    {
        "name": "canary_deploy",
        "kind": PolicyKind.CANARY,
        "order": 30,
        "description": "A promoted version takes a growing share of requests, stage by stage, and is rolled back "
        "as soon as it errs, slows down, or answers worse than production on the same traffic. The demo's stages "
        "are short so that a rollout ends in minutes; the seed's last hours: lengthen them for real traffic.",
        "scope_recipes": ["digits"],
        "canary_min_requests": 30,
        "conditions": [
            {
                "kind": ConditionKind.METRIC,
                "metric": "error_rate",
                "operator": ">",
                "threshold": 0.05,
                "role": ConditionRole.ROLLBACK_ON,
            },
            {
                "kind": ConditionKind.METRIC,
                "metric": "latency_p99_ms",
                "operator": ">",
                "threshold": 500,
                "role": ConditionRole.ROLLBACK_ON,
            },
            {
                "kind": ConditionKind.REGRESSION,
                "metric": "accuracy",
                "threshold": 0.05,
                "role": ConditionRole.ROLLBACK_ON,
            },
        ],
        "stages": [("canary_10pct", 10, 60), ("canary_50pct", 50, 60), ("full_rollout", 100, 0)],
    },
    {
        "name": "cost_aware_schedule",
        "kind": PolicyKind.COST,
        "order": 40,
        "description": "Keep the day's training spend and the number of runs at once within bounds; within a "
        "priority class, the runs expected to improve the most per dollar go first.",
        "daily_budget_usd": Decimal("100"),
        "max_concurrent_runs": 3,
        "priority_by": "improvement_per_dollar",
    },
]

DEMO_PRICES = {
    "cpu": Decimal("0.05"),
    "H100": Decimal("2.50"),
    "H200": Decimal("3.50"),
    "A100": Decimal("1.80"),
}


@transaction.atomic
def demo_policies_ensure() -> list[Policy]:
    """Create the demo policies and GPU prices that are missing (idempotent; edits are kept)."""
    for gpu_type, price in DEMO_PRICES.items():
        GpuPrice.objects.get_or_create(gpu_type=gpu_type, project=None, defaults={"usd_per_hour": price})
    policies = []
    for definition in DEMO_POLICIES:
        existing = Policy.objects.filter(name=definition["name"]).first()
        policies.append(existing or policy_create(**definition))
    return policies
