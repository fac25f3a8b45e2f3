"""Wiring: transition hooks drive the scheduler and cancel; Celery worker signals drive the heartbeat."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from django.conf import settings
from django.db import transaction
from django.utils import timezone

import control.scheduling.services as services
from control.scheduling.inventory import HeartbeatThread
from experiments.actors import Actor
from experiments.models import Experiment, Run
from experiments.runs.services import on_run_ended
from experiments.services import on_transition

logger = logging.getLogger(__name__)


@on_transition("queue", "retry", "requeue")
def _tick_for_new_work(experiment: Experiment, actor: Actor) -> None:
    """Work entered the queue: look for a device now, or when its retry backoff ends."""
    wait = 0.0
    if experiment.not_before is not None:
        wait = max(0.0, (experiment.not_before - timezone.now()).total_seconds())
    services.send_tick(countdown=wait)


@on_transition("cancel", "requeue")
def _stop_live_runs(experiment: Experiment, actor: Actor) -> None:
    """Ask the experiment's running attempt to stop (cooperatively, then hard after the grace)."""
    with transaction.atomic():
        services.experiment_request_cancel(experiment_id=experiment.pk)


@on_run_ended
def _release_leases(run: Run) -> None:
    """A run ended: free its devices and let the scheduler use them."""
    services.leases_release(run_id=run.pk)
    services.tick_after_commit()


_heartbeat: HeartbeatThread | None = None


def _tick_now() -> None:
    services.send_tick()


@worker_init.connect
def _preload_recipes(sender: Any = None, **kwargs: Any) -> None:
    """Import the recipes (torch, scikit-learn) once in the parent, so pool processes start warm.

    Importing torch does not start CUDA; the first CUDA call happens in the pool process.
    """
    if not getattr(settings, "WORKER_PRELOAD_RECIPES", True):
        return
    from experiments.recipes.catalog import RECIPES

    for spec in RECIPES.values():
        try:
            spec.load()
        except Exception:
            logger.warning("could not preload recipe %s", spec.name, exc_info=True)
    import torch

    if torch.cuda.is_initialized():  # a recipe module touched CUDA at import: pool processes would break
        logger.error(
            "CUDA was initialised in the worker's parent process; GPU runs in pool processes will fail"
        )


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    """Start heart-beating this worker's devices from its parent process (NVML only, never CUDA)."""
    global _heartbeat
    hostname = getattr(sender, "hostname", None)
    if not hostname or _heartbeat is not None:
        return
    _heartbeat = HeartbeatThread(hostname=str(hostname), on_online=_tick_now)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    """Stop the heartbeat and mark the worker offline on a clean shutdown."""
    global _heartbeat
    if _heartbeat is not None:
        try:
            _heartbeat.stop()
        except Exception:
            logger.warning("could not mark the worker offline", exc_info=True)
        _heartbeat = None
