"""Send Celery tasks by their registered name.

Services start tasks, and tasks call services: a service that imported its tasks module
would close an import cycle. Naming the task ("control.train_run") keeps the arrow one way;
where the task is registered in this process, Celery still uses it (eager mode, routing).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app

logger = logging.getLogger(__name__)


def task_send(name: str, *, args: list[Any] | None = None, **options: Any) -> None:
    """Queue the task called `name` with these positional arguments and apply_async options."""
    current_app.signature(name, args=args or []).apply_async(**options)


def task_revoke(task_id: str) -> None:
    """Kill the pool process that runs this task (prefork only); the run's lease is then freed."""
    current_app.control.revoke(task_id, terminate=True, signal="SIGKILL")


def tasks_send(batch: list[tuple[str, list[Any], dict[str, Any]]]) -> None:
    """Queue several (name, args, apply_async options) tasks over one broker connection, in order.

    The tasks must bear being delivered twice (a train task is claimed once by its run): when
    the one batched write fails, part of it may have reached the broker before they all go
    again one by one.
    """
    try:
        with current_app.producer_or_acquire() as producer, producer.batch():
            # The producer's batch buffers the broker writes (a Redis pipeline) and sends them at
            # the end of the block: one round trip for the lot instead of one per task.
            for name, args, options in batch:
                current_app.signature(name, args=args).apply_async(producer=producer, **options)
    except Exception:
        # The batched write is tried once; one message at a time, each send retries as Celery's
        # retry policy says (a broker that restarts in the meantime).
        logger.warning(
            "sending %d tasks in one write failed; sending them one by one", len(batch), exc_info=True
        )
        with current_app.producer_or_acquire() as producer:
            for name, args, options in batch:
                current_app.signature(name, args=args).apply_async(producer=producer, **options)
