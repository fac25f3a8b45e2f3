"""Websocket consumers of the live view: authenticate, join the page's groups, forward events.

Close codes tell the page why it was refused, so it stops reconnecting: 4401 not logged
in, 4403 no permission, 4404 no such experiment.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from experiments.events import FLEET_GROUP, GPUS_GROUP, TRIGGERS_GROUP, experiment_group
from experiments.models import Experiment
from experiments.permissions import requires_permission

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

# Client frames are tiny ({"type": "ping"}); anything larger is refused unread.
MAX_CLIENT_FRAME = 4096


def _finite(value: Any) -> Any:
    """Return the value with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_event(event: dict[str, Any]) -> str:
    """Return an event as strict JSON text (non-finite numbers become null)."""
    try:
        return json.dumps(event, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(event), separators=(",", ":"), allow_nan=False)


class LiveConsumer(AsyncWebsocketConsumer):
    """Base of the live consumers: checks the session user and forwards group events as JSON."""

    permission = "experiments.view_experiment"

    async def connect(self) -> None:
        """Accept a logged-in user with the view permission and join the page's groups."""
        user = self.scope.get("user")
        # Accept before closing so that the browser sees our close code, not a bare 403.
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(user.has_perm)(self.permission):
            await self._refuse(CLOSE_FORBIDDEN)
            return
        groups = await self.live_groups()
        if groups is None:
            await self._refuse(CLOSE_NOT_FOUND)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        # websocket_disconnect discards these groups again.
        self.groups = list(groups)
        await self.accept()

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def live_groups(self) -> list[str] | None:
        """Return the groups this page listens to, or None when its object does not exist."""
        raise NotImplementedError

    # --- frames from the browser: only ping is understood; nothing else changes anything ---

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Answer a ping with a pong; answer anything else with an error frame."""
        if text_data is None:
            await self._error("binary frames are not understood; send JSON text")
            return
        if len(text_data) > MAX_CLIENT_FRAME:
            await self._error(f"frame too large (limit {MAX_CLIENT_FRAME} characters)")
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            await self._error("invalid JSON")
            return
        if not isinstance(message, dict):
            await self._error('expected a JSON object such as {"type": "ping"}')
            return
        kind = message.get("type")
        if kind == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if isinstance(message.get("id"), str | int) and not isinstance(message.get("id"), bool):
                pong["id"] = message["id"]
            await self.send(text_data=json.dumps(pong))
            return
        await self._error(f"unknown message type {str(kind)[:40]!r}; only 'ping' is understood")

    async def _error(self, message: str) -> None:
        await self.send(text_data=json.dumps({"type": "error", "message": message}))

    # --- events from the channel layer (dispatch maps "state.changed" to state_changed) ---

    async def forward(self, event: dict[str, Any]) -> None:
        """Send one channel-layer event to the browser as JSON."""
        await self.send(text_data=encode_event(event))

    async def state_changed(self, event: dict[str, Any]) -> None:
        """An experiment changed state."""
        await self.forward(event)

    async def metrics_batch(self, event: dict[str, Any]) -> None:
        """The reporter flushed several points."""
        await self.forward(event)

    async def run_progress(self, event: dict[str, Any]) -> None:
        """A run reported how far it has come."""
        await self.forward(event)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Forward events of types this consumer has no handler for yet (triggers, GPU stats...).

        A producer added later (a new dotted event type) then reaches the page without a
        change here, and an odd message is logged instead of killing the connection.
        """
        kind = message.get("type", "")
        if (
            isinstance(kind, str)
            and not kind.startswith("websocket.")
            and "." in kind
            and getattr(self, kind.replace(".", "_"), None) is None
        ):
            await self.forward(message)
            return
        try:
            await super().dispatch(message)
        except ValueError:
            if isinstance(kind, str) and kind.startswith("websocket."):
                raise
            logger.warning("live consumer dropped an event of type %r", kind)


@requires_permission("experiments.view_experiment")
class ExperimentConsumer(LiveConsumer):
    """/ws/experiments/<id>/: metric batches, state changes, progress and triggers of one experiment."""

    async def live_groups(self) -> list[str] | None:
        """Return the experiment's group, or None when it does not exist."""
        experiment_id = int(self.scope["url_route"]["kwargs"]["experiment_id"])
        exists = await Experiment.objects.filter(pk=experiment_id).aexists()
        return [experiment_group(experiment_id)] if exists else None


@requires_permission("experiments.view_experiment")
class FleetConsumer(LiveConsumer):
    """/ws/fleet/: every experiment's state changes and latest values."""

    async def live_groups(self) -> list[str] | None:
        """Return the fleet group."""
        return [FLEET_GROUP]


@requires_permission("control.view_device")
class GpusConsumer(LiveConsumer):
    """/ws/gpus/: the worker inventory's GPU stats."""

    permission = "control.view_device"

    async def live_groups(self) -> list[str] | None:
        """Return the GPU stats group."""
        return [GPUS_GROUP]


@requires_permission("control.view_triggerevent")
class TriggersConsumer(LiveConsumer):
    """/ws/triggers/: every policy trigger as it fires, waits for approval and is acted on."""

    permission = "control.view_triggerevent"

    async def live_groups(self) -> list[str] | None:
        """Return the triggers group."""
        return [TRIGGERS_GROUP]
