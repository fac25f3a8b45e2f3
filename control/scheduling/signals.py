"""Celery worker signals: preload the recipes, heart-beat the devices, stop with a checkpoint.

Stopping a worker (SIGTERM or Ctrl-C to its parent, as the launcher does; or SIGTERM to its
whole process group) must not lose training: the parent marks itself stopping (no new runs),
forwards SIGTERM to its pool processes and gives them STOP_TIMEOUT_S. A pool process that
trains a run turns SIGTERM into a stop request: the loop checkpoints at its next step, the run
ends interrupted and its experiment is requeued without spending an attempt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from django.conf import settings
from django.utils import timezone

from control.scheduling.inventory import HeartbeatThread
from control.scheduling.services import send_tick, worker_runs_interrupt_stale
from experiments.recipes.catalog import RECIPES
from experiments.recipes.stop import stop_all, stop_on_signals, stop_reason

logger = logging.getLogger(__name__)

TRAIN_TASK = "control.train_run"
# The parent needs a moment after its pool to finish its own shutdown within STOP_TIMEOUT_S.
_PARENT_EXIT_ALLOWANCE_S = 2.0

_heartbeat: HeartbeatThread | None = None
_consumer: Any = None
_started_at = timezone.now()  # reset at worker_init: runs that beat before it belong to an earlier process
_stop_handlers: dict[str, contextlib.ExitStack] = {}


def _tick_now() -> None:
    send_tick()


@worker_init.connect
def _remember_start(sender: Any = None, **kwargs: Any) -> None:
    """Note when this worker process started (before it can have claimed any run)."""
    global _started_at
    _started_at = timezone.now()


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
    global _heartbeat, _consumer
    _consumer = sender  # its pool's processes are told when the worker stops
    hostname = getattr(sender, "hostname", None)
    if not hostname or _heartbeat is not None:
        return
    name = str(hostname)
    _heartbeat = HeartbeatThread(
        hostname=name,
        on_online=_tick_now,
        on_start=lambda: worker_runs_interrupt_stale(hostname=name, started_at=_started_at),
    )
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


def _pool_pids() -> list[int]:
    """Return the pids of this worker's pool processes (none for the solo and thread pools)."""
    pool = getattr(_consumer, "pool", None)
    try:
        return [int(pid) for pid in (pool.info.get("processes") or [])] if pool is not None else []
    except Exception:
        return []


def _signal_pool(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _kill_pool_left_over(pids: list[int]) -> None:
    """STOP_TIMEOUT_S is up: kill the pool processes still there (their runs are left to the watchdog)."""
    # The pids seen when the stop began: by now the pool may be closing and list none.
    left = [pid for pid in {*pids, *_pool_pids()} if _is_our_child(pid)]
    if left:
        logger.warning("pool processes %s did not stop within the stop timeout: killing them", left)
        _signal_pool(left, signal.SIGKILL)


def _is_our_child(pid: int) -> bool:
    """Return True when pid is alive and a child of this process (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # The fields after the parenthesised command name: state, ppid, ...
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[1]) == os.getpid() and fields[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False


@worker_shutting_down.connect
def _stop_with_checkpoints(sender: Any = None, **kwargs: Any) -> None:
    """The worker began shutting down: no new runs, every run checkpoints now, none outlives STOP_TIMEOUT_S.

    Runs in the parent's signal handler: only assignments, os.kill and a timer thread here.
    """
    if _heartbeat is not None:
        _heartbeat.begin_stopping()
    # Runs of a solo or thread pool train in this very process.
    stop_all("the worker is shutting down")
    pids = _pool_pids()
    _signal_pool(pids, signal.SIGTERM)
    delay = max(0.5, float(settings.STOP_TIMEOUT_S) - _PARENT_EXIT_ALLOWANCE_S)
    timer = threading.Timer(delay, _kill_pool_left_over, args=(pids,))
    timer.daemon = True
    timer.start()


@task_prerun.connect
def _sigterm_checkpoints_the_run(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
    """In a pool process training a run, SIGTERM asks the loop to checkpoint and stop instead of exiting."""
    if getattr(sender, "name", "") != TRAIN_TASK or getattr(sender.request, "is_eager", False):
        return
    stack = contextlib.ExitStack()
    stack.enter_context(stop_on_signals(signal.SIGTERM, reason="the worker is shutting down"))
    _stop_handlers[task_id] = stack


@task_postrun.connect
def _sigterm_back_to_default(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
    """The run ended: SIGTERM ends the idle pool process again, as Celery expects."""
    stack = _stop_handlers.pop(task_id, None)
    if stack is not None and stop_reason() is None:
        stack.close()
    # Once the worker stops, a second SIGTERM (to the whole group, and forwarded) must not cut
    # the process short while it hands its result back; the pool's close ends it.
