"""Every model of the control app, for Django and for importers outside the app.

Each concern keeps its models in its own package (scheduling, policies, canary); code
inside the app imports them from there, so this module is never part of an import cycle.
"""

from control.canary.models import LIVE_ROLLOUT_STATUSES, ABTest, ABTestStatus, CanaryRollout, RolloutStatus
from control.policies.models import (
    ActionExecution,
    ActionRole,
    CanaryStage,
    ConditionRole,
    ExecutionStatus,
    GpuPrice,
    Policy,
    PolicyAction,
    PolicyArm,
    PolicyCondition,
    PolicyKind,
    PolicyMode,
    TriggerEvent,
    TriggerStatus,
)
from control.scheduling.models import Device, DeviceKind, Worker

__all__ = [
    "LIVE_ROLLOUT_STATUSES",
    "ABTest",
    "ABTestStatus",
    "ActionExecution",
    "ActionRole",
    "CanaryRollout",
    "CanaryStage",
    "ConditionRole",
    "Device",
    "DeviceKind",
    "ExecutionStatus",
    "GpuPrice",
    "Policy",
    "PolicyAction",
    "PolicyArm",
    "PolicyCondition",
    "PolicyKind",
    "PolicyMode",
    "RolloutStatus",
    "TriggerEvent",
    "TriggerStatus",
    "Worker",
]
