"""Celery beat schedule of the control layer (settings: CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE)."""

from __future__ import annotations

import os
from typing import Any

# Read from the environment like settings (this module is imported by settings, so it
# cannot read django.conf.settings).
_TICK = float(os.getenv("SCHEDULER_TICK_SECONDS", "5"))
_WATCHDOG = float(os.getenv("WATCHDOG_SECONDS", "10"))
_APPROVALS = float(os.getenv("APPROVAL_SWEEP_SECONDS", "30"))
_CLEANUP = float(os.getenv("CHECKPOINT_CLEANUP_SECONDS", str(24 * 3600)))
_CANARY = float(os.getenv("CANARY_SWEEP_SECONDS", "5"))
_DRIFT = float(os.getenv("DRIFT_SWEEP_SECONDS", "300"))

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "scheduler-tick": {
        "task": "control.scheduler_tick",
        "schedule": _TICK,
        "options": {"queue": "control", "expires": _TICK * 2},
    },
    "watchdog-sweep": {
        "task": "control.watchdog_sweep",
        "schedule": _WATCHDOG,
        "options": {"queue": "control", "expires": _WATCHDOG * 2},
    },
    "approval-timeouts": {
        "task": "control.triggers_expire",
        "schedule": _APPROVALS,
        "options": {"queue": "control", "expires": _APPROVALS * 2},
    },
    "canary-sweep": {
        "task": "control.canary_sweep",
        "schedule": _CANARY,
        "options": {"queue": "control", "expires": _CANARY * 2},
    },
    "drift-sweep": {
        "task": "control.drift_sweep",
        "schedule": _DRIFT,
        "options": {"queue": "control", "expires": _DRIFT * 2},
    },
    "checkpoint-cleanup": {
        "task": "control.checkpoints_cleanup",
        "schedule": _CLEANUP,
        "options": {"queue": "control", "expires": 3600},
    },
}
