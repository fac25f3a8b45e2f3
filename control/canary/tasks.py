"""Celery tasks of canary rollouts: thin wrappers that call one service."""

from __future__ import annotations

from celery import shared_task

from control.canary.rollouts import canary_sweep


@shared_task(name="control.canary_sweep", queue="control")
def canary_sweep_task() -> dict[str, str]:
    """Judge every live canary rollout: roll back, move to the next stage, or deploy."""
    return canary_sweep()
