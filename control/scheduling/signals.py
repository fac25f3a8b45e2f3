"""Celery worker signals: preload the recipes in the parent, heart-beat the worker's devices."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from django.conf import settings

from control.scheduling.inventory import HeartbeatThread
from control.scheduling.services import send_tick
from experiments.recipes.catalog import RECIPES

logger = logging.getLogger(__name__)


_heartbeat: HeartbeatThread | None = None


def _tick_now() -> None:
    send_tick()


@worker_init.connect
def _preload_recipes(sender: Any = None, **kwargs: Any) -> None:
    """Import the recipes (torch, scikit-learn) once in the parent, so pool processes start warm.

    Importing torch does not start CUDA; the first CUDA call happens in the pool process.
    """
    if not getattr(settings, "WORKER_PRELOAD_RECIPES", True):
        return
    for spec in RECIPES.values():
        try:
            spec.load()
        except Exception:
            logger.warning("could not preload recipe %s", spec.name, exc_info=True)
    import torch  # only a worker preloads: web and beat never import torch

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
