"""Celery beat schedule of the control layer (settings: CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE)."""

from __future__ import annotations

import os
from typing import Any


def _every(task: str, env: str, default_seconds: float, expires: float | None = None) -> dict[str, Any]:
    """Return a beat entry running task on the control queue every $env seconds.

    Read from the environment like settings (this module is imported by settings, so it
    cannot read django.conf.settings). A run not started within two periods (or `expires`)
    is dropped: the next one does the same work.
    """
    seconds = float(os.getenv(env, str(default_seconds)))
    return {
        "task": task,
        "schedule": seconds,
        "options": {"queue": "control", "expires": expires if expires is not None else seconds * 2},
    }


BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "scheduler-tick": _every("control.scheduler_tick", "SCHEDULER_TICK_SECONDS", 5),
    "watchdog-sweep": _every("control.watchdog_sweep", "WATCHDOG_SECONDS", 10),
    "approval-timeouts": _every("control.triggers_expire", "APPROVAL_SWEEP_SECONDS", 30),
    "canary-sweep": _every("control.canary_sweep", "CANARY_SWEEP_SECONDS", 5),
    "drift-sweep": _every("control.drift_sweep", "DRIFT_SWEEP_SECONDS", 300),
    "checkpoint-cleanup": _every(
        "control.checkpoints_cleanup", "CHECKPOINT_CLEANUP_SECONDS", 24 * 3600, expires=3600
    ),
}
