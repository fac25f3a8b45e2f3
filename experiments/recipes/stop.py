"""Asking every training loop of this process to checkpoint and stop at its next step.

A worker being shut down (SIGTERM, Celery's warm shutdown, Ctrl-C of the launcher) must not
lose the steps since the last periodic checkpoint. The request arrives in a signal handler,
so it is one assignment here; a run context reads it in should_stop(), once per step, and the
recipe's loop then saves a checkpoint at the step it is at and returns. No torch, no Django:
the worker's parent process and the web process import this too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_reason: str | None = None


def stop_all(reason: str) -> None:
    """Ask every loop of this process to checkpoint and stop at its next step (safe in a signal handler)."""
    global _reason
    if _reason is None:  # the first reason wins: it is what the run records
        _reason = reason


def stop_reason() -> str | None:
    """Return why this process was asked to stop, or None (cheap: read every step)."""
    return _reason


def stop_clear() -> None:
    """Forget a stop request (a process that goes on training after it, e.g. a test)."""
    global _reason
    _reason = None


@contextmanager
def stop_on_signals(*signums: int, reason: str) -> Iterator[bool]:
    """While inside, the given signals ask for a stop instead of ending the process; yield whether installed.

    Only the main thread may install signal handlers; elsewhere (a thread pool) nothing is
    installed and the caller's own shutdown path must call stop_all().
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop_all(f"{reason} ({signal.Signals(signum).name})")

    previous: dict[int, Any] = {sig: signal.signal(sig, handler) for sig in signums}
    try:
        yield True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
