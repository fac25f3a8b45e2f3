"""Typed payloads pushed to open pages over the channel layer, and the one way to send them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
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


Messages = list[tuple[str, dict[str, Any]]]

SEND_TIMEOUT_SECONDS = 5.0
# Sends handed over and not yet sent: beyond this (a channel layer that hangs) a send is
# dropped and counted as failed; the pages fill such a hole from the history endpoint when
# the next frame shows it.
MAX_PENDING_SENDS = 256


class _Send:
    """One hand-over to the publisher: its messages (or how to build them), and the future of a caller who waits."""

    __slots__ = ("done", "layer", "messages")

    def __init__(
        self,
        layer: Any,
        messages: Messages | Callable[[], Messages],
        done: concurrent.futures.Future[None] | None,
    ) -> None:
        self.layer = layer
        self.messages = messages
        self.done = done

    async def run(self) -> None:
        kinds = "?"
        try:
            messages = self.messages() if callable(self.messages) else self.messages
            if messages:
                kinds = ", ".join(sorted({str(p.get("type")) for _, p in messages}))
                await asyncio.wait_for(self._send_all(messages), SEND_TIMEOUT_SECONDS)
                _send_failures.success()
        except Exception:  # the live view is best effort; never break the publisher
            _send_failures.failure(kinds)
        finally:
            if self.done is not None:
                self.done.set_result(None)

    async def _send_all(self, messages: Messages) -> None:
        # Consumers dispatch on "type": "metrics.batch" calls their metrics_batch handler.
        for group, payload in messages:
            await self.layer.group_send(group, payload)


class _Publisher:
    """One event loop thread per process that carries every channel-layer send, one at a time, in order.

    async_to_sync would start a fresh loop per call, and with it a fresh Redis connection
    for the layer; a long-lived loop keeps the connection and costs one handoff per call.
    Sends leave in the order they were handed over (one queue, one sender), so the frames of
    a run reach its page in the order their step ranges say. A caller waits for its send or
    hands it over and goes on: a metric batch posted over HTTP is answered without waiting
    for Redis. Started lazily, and again in a forked child (a Celery pool process does not
    inherit the parent's thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Send] | None = None
        self._pid = 0
        self._pending = 0

    def submit(self, send: _Send) -> bool:
        """Queue a send behind those handed over before it; False when MAX_PENDING_SENDS are waiting."""
        with self._lock:
            if self._loop is None or self._queue is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                queue: asyncio.Queue[_Send] = asyncio.Queue()
                threading.Thread(target=loop.run_forever, name="channel-layer-publisher", daemon=True).start()
                asyncio.run_coroutine_threadsafe(self._sender(queue), loop)
                self._loop, self._queue, self._pid, self._pending = loop, queue, os.getpid(), 0
            if self._pending >= MAX_PENDING_SENDS:
                return False
            self._pending += 1
            loop, queue = self._loop, self._queue
        loop.call_soon_threadsafe(queue.put_nowait, send)
        return True

    async def _sender(self, queue: asyncio.Queue[_Send]) -> None:
        while True:
            send = await queue.get()
            try:
                await send.run()
            finally:
                with self._lock:
                    self._pending -= 1


_publisher = _Publisher()


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


def send_messages(messages: Messages | Callable[[], Messages], *, wait: bool = True) -> None:
    """Send (group, payload) pairs in one hop to the publisher, after everything handed over before; never raises.

    messages may be a function that builds them: it runs on the publisher's thread, in order.
    wait=False returns at once (the send's outcome is logged by the publisher); wait=True
    returns once it is sent or failed (at most about SEND_TIMEOUT_SECONDS).
    """
    layer = get_channel_layer()
    if layer is None or not messages:
        return
    done: concurrent.futures.Future[None] | None = concurrent.futures.Future() if wait else None
    if not _publisher.submit(_Send(layer, messages, done)):
        _send_failures.failure(f"a send over the backlog of {MAX_PENDING_SENDS}")
        return
    if done is not None:
        # A send that overruns has its own timeout and logs its own outcome.
        with suppress(concurrent.futures.TimeoutError):
            done.result(timeout=SEND_TIMEOUT_SECONDS + 1.0)


def sends_drain(timeout: float = SEND_TIMEOUT_SECONDS) -> bool:
    """Wait until every send handed over so far has gone (or failed); False if that took over timeout.

    A process about to end calls it (a worker's run that just flushed its last batch).
    """
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    if not _publisher.submit(_Send(None, [], done)):
        return False
    try:
        done.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return False
    return True


def pipeline_change_messages(*, experiment_ids: list[int], about: int, target: str) -> Messages:
    """Return the messages that tell an experiment's pipeline neighbours' pages that it moved."""
    payload = {"type": "pipeline.changed", "experiment_id": about, "target": target}
    return [(experiment_group(pk), payload) for pk in experiment_ids]


def publish_pipeline_change(*, experiment_ids: list[int], about: int, target: str) -> None:
    """Tell the pages of an experiment's pipeline neighbours that it moved (their pipeline card refreshes)."""
    if experiment_ids:
        send_messages(pipeline_change_messages(experiment_ids=experiment_ids, about=about, target=target))


def state_change_messages(
    *, experiment_id: int, event: str, source: str, target: str, actor: str
) -> Messages:
    """Return the messages that tell the experiment's page and the fleet page about a transition."""
    payload: StateChanged = {
        "type": "state.changed",
        "experiment_id": experiment_id,
        "event": event,
        "source": source,
        "target": target,
        "actor": actor,
    }
    return [(experiment_group(experiment_id), dict(payload)), (FLEET_GROUP, dict(payload))]


def publish_state_change(*, experiment_id: int, event: str, source: str, target: str, actor: str) -> None:
    """Tell the experiment's page and the fleet page about a transition."""
    send_messages(
        state_change_messages(
            experiment_id=experiment_id, event=event, source=source, target=target, actor=actor
        )
    )


def publish_evaluation_change(*, experiment_id: int, run_id: int, status: str) -> None:
    """Tell the experiment's page that an evaluation job ended (its panels fetch the result)."""
    payload: EvaluationChanged = {
        "type": "evaluation.changed",
        "experiment_id": experiment_id,
        "run_id": run_id,
        "status": status,
    }
    send_to_groups([experiment_group(experiment_id)], dict(payload))
