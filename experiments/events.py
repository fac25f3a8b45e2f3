"""Typed payloads pushed to open pages over the channel layer, and the one way to send them."""

from __future__ import annotations

import logging
from typing import Any, Literal, TypedDict

from asgiref.sync import async_to_sync
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


class MetricPointPayload(TypedDict):
    """One point inside a metric batch."""

    name: str
    step: int
    value: float | None
    wall_time: float


class MetricBatch(TypedDict):
    """Several points that the reporter flushed together."""

    type: Literal["metrics.batch"]
    experiment_id: int
    run_id: int
    points: list[MetricPointPayload]


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
    layer = get_channel_layer()
    if layer is None:
        return
    # Consumers dispatch on "type": "metrics.batch" calls their metrics_batch handler.
    message = {**payload}
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # the live view is best effort; never break the caller's write
        logger.warning("channel layer send failed for %s", payload.get("type"), exc_info=True)


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
