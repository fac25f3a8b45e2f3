"""Typed payloads pushed to open pages over the channel layer, and the one way to send them."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Literal, NotRequired, TypedDict

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

FLEET_GROUP = "fleet"
GPUS_GROUP = "gpus"
TRIGGERS_GROUP = "triggers"


def experiment_group(experiment_id: int) -> str:
    """Return the channel-layer group of one experiment's page."""
    return f"experiment.{experiment_id}"


class StateChanged(TypedDict):
    """An experiment moved from one state to another."""

    type: Literal["state.changed"]
    experiment_id: int
    event: str
    source: str
    target: str
    actor: str


class EvaluationChanged(TypedDict):
    """A run's evaluation job ended (the experiment page shows its result)."""

    type: Literal["evaluation.changed"]
    experiment_id: int
    run_id: int
    status: str


class MetricPointPayload(TypedDict):
    """One point inside a metric batch."""

    name: str
    step: int
    value: float | None
    wall_time: float


class StepRange(TypedDict):
    """The steps of one metric a frame carries, and the step it follows (None: the first frame seen)."""

    after: int | None
    first: int
    last: int


class MetricBatch(TypedDict):
    """Several points that the reporter flushed together.

    ranges (on the experiment page's frames): per metric, the step the frame follows, so
    that a page detects a missed frame and back-fills it from the history endpoint.
    """

    type: Literal["metrics.batch"]
    experiment_id: int
    run_id: int
    points: list[MetricPointPayload]
    ranges: NotRequired[dict[str, StepRange]]


class Progress(TypedDict):
    """How far a run has come."""

    type: Literal["run.progress"]
    experiment_id: int
    run_id: int
    progress: float
    eta_seconds: float | None
    step: int


def send_to_groups(groups: list[str], payload: dict[str, Any]) -> None:
    """Send one payload to each group; a missing channel layer is logged, never raised.

    Callers run this after commit: the database is the truth, a page that missed an
    event catches up from the history endpoint.
    """
    send_messages([(group, payload) for group in groups])


class _PublisherLoop:
    """One event loop thread per process that carries every channel-layer send.

    async_to_sync would start a fresh loop per call, and with it a fresh Redis connection
    for the layer; a long-lived loop keeps the connection and costs one handoff per call.
    It also works from threads that run a loop of their own. Started lazily, and again in
    a forked child (a Celery pool process does not inherit the parent's thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="channel-layer-publisher", daemon=True
                )
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_publisher = _PublisherLoop()
SEND_TIMEOUT_SECONDS = 5.0


class _SendFailureLog:
    """Logs an outage of the channel layer once, not once per send.

    During a Redis outage every metric flush fails (about ten a second): a traceback each
    would bury the log lines that matter. The first failure of an outage is logged with its
    traceback, then at most one line a minute with how many sends failed, and one line when
    a send gets through again.
    """

    REPEAT_SECONDS = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failed = 0  # sends failed since the outage began (0: no outage)
        self._last_logged = 0.0

    def failure(self, kinds: str) -> None:
        with self._lock:
            self.failed += 1
            now = time.monotonic()
            first = self.failed == 1
            if not first and now - self._last_logged < self.REPEAT_SECONDS:
                return
            self._last_logged = now
            failed = self.failed
        if first:
            logger.warning("channel layer send failed for %s (live views miss events)", kinds, exc_info=True)
        else:
            logger.warning("channel layer still unreachable: %d sends failed so far", failed)

    def success(self) -> None:
        if not self.failed:  # the common case: no lock taken
            return
        with self._lock:
            failed, self.failed = self.failed, 0
        if failed:
            logger.warning("channel layer reachable again after %d failed sends", failed)


_send_failures = _SendFailureLog()


def send_messages(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send (group, payload) pairs in one hop to the publisher loop; failures are logged, never raised."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return

    async def send_all() -> None:
        # Consumers dispatch on "type": "metrics.batch" calls their metrics_batch handler.
        for group, payload in messages:
            await layer.group_send(group, payload)

    try:
        future = asyncio.run_coroutine_threadsafe(send_all(), _publisher.loop())
        future.result(timeout=SEND_TIMEOUT_SECONDS)
    except Exception:  # the live view is best effort; never break the caller's write
        _send_failures.failure(", ".join(sorted({str(p.get("type")) for _, p in messages})))
    else:
        _send_failures.success()


def publish_state_change(*, experiment_id: int, event: str, source: str, target: str, actor: str) -> None:
    """Tell the experiment's page and the fleet page about a transition."""
    payload: StateChanged = {
        "type": "state.changed",
        "experiment_id": experiment_id,
        "event": event,
        "source": source,
        "target": target,
        "actor": actor,
    }
    send_to_groups([experiment_group(experiment_id), FLEET_GROUP], dict(payload))


def publish_evaluation_change(*, experiment_id: int, run_id: int, status: str) -> None:
    """Tell the experiment's page that an evaluation job ended (its panels fetch the result)."""
    payload: EvaluationChanged = {
        "type": "evaluation.changed",
        "experiment_id": experiment_id,
        "run_id": run_id,
        "status": status,
    }
    send_to_groups([experiment_group(experiment_id)], dict(payload))
