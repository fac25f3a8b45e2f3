"""Websocket consumers of the live view: authenticate, join the page's groups, forward events.

Close codes tell the page why it was refused, so it stops reconnecting: 4401 not logged
in (or the session ended while the socket was open), 4403 no permission, 4404 no such
experiment. A {"type": "resync"} frame tells the page that events may have been lost
(the channel layer's Redis connection dropped and came back): it then fetches what it
missed from the history endpoint.

Connecting costs one thread hop to the database (session, user, permission and the
experiment in one go) and no Redis round trip beyond the subscription: a restart of the
web process makes every open page reconnect at once, and each hop opens a database
connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from types import SimpleNamespace
from typing import Any, cast

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib import auth

from experiments.events import FLEET_GROUP, GPUS_GROUP, TRIGGERS_GROUP, experiment_group
from experiments.live.sessions import SessionRef, sessions_ended
from experiments.permissions import Decision, access_of, requires_permission
from experiments.projects import may_see_experiment

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
# The channel layer is unreachable: the page retries with its backoff.
CLOSE_TRY_AGAIN = 1013

# Client frames are tiny ({"type": "ping"}); anything larger is refused unread.
MAX_CLIENT_FRAME = 4096
# Daphne drops a handshake its application did not accept within 5 s
# (--websocket_handshake_timeout); past this, a connection is not worth the work.
HANDSHAKE_BUDGET_SECONDS = 4.0
# How often the sessions behind open sockets are checked again (a logout closes its socket
# within this plus one database round trip).
DEFAULT_SESSION_RECHECK_SECONDS = 2.0


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

    session_ref: SessionRef | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # The server created this instance when the handshake began: its clock starts here.
        self.opened_at = time.monotonic()
        await super().__call__(scope, receive, send)

    async def connect(self) -> None:
        """Accept a logged-in user with the view permission and join the page's groups."""
        if self._handshake_expired():
            await self.close()  # refused at the handshake: the page reconnects with its backoff
            return
        # Not thread-sensitive: these are independent reads, so during a reconnect storm
        # they run side by side in the executor's threads instead of queueing behind one.
        verdict = await database_sync_to_async(self.authorize, thread_sensitive=False)()
        if self._handshake_expired():
            await self.close()
            return
        # Accept before closing so that the browser sees our close code, not a bare 403.
        if isinstance(verdict, int):
            await self._refuse(verdict)
            return
        try:
            for group in verdict:
                await self.channel_layer.group_add(group, self.channel_name)
        except Exception:
            logger.warning("live socket could not join %s; the page will retry", verdict, exc_info=True)
            await self._refuse(CLOSE_TRY_AGAIN)
            return
        # websocket_disconnect discards these groups again.
        self.groups = list(verdict)
        await self.accept()
        session_watch.add(self)

    def authorize(self) -> int | list[str]:
        """Return the page's groups, or the close code that refuses it (runs in one database hop)."""
        user = self.scope.get("user")
        if user is None:
            session = self.scope.get("session")
            # django.contrib.auth reads request.session only: the session checks (auth hash,
            # backend, active user) are Django's own.
            user = auth.get_user(cast(Any, SimpleNamespace(session=session))) if session is not None else None
            self.scope["user"] = user
        # The class's own access declaration is checked here, in the same database hop as
        # the session: a reconnect storm pays one hop per socket, not two.
        access = access_of(type(self))
        decision = access.decide(user) if access is not None else Decision.FORBIDDEN
        if decision is Decision.LOGIN:
            return CLOSE_UNAUTHENTICATED
        if decision is Decision.HIDDEN:
            return CLOSE_NOT_FOUND
        if decision is not Decision.ALLOWED:
            return CLOSE_FORBIDDEN
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if session_key:
            self.session_ref = (session_key, int(user.pk))
        groups = self.live_groups()
        return CLOSE_NOT_FOUND if groups is None else groups

    def _handshake_expired(self) -> bool:
        """Shed a handshake the server is about to drop anyway (Daphne allows 5 s); the page retries.

        Under a reconnect storm, finishing the work of connections that already timed out
        would delay every later one past its own timeout too: nobody would get in.
        """
        if time.monotonic() - getattr(self, "opened_at", time.monotonic()) <= HANDSHAKE_BUDGET_SECONDS:
            return False
        logger.info(
            "live socket handshake shed after %.1f s (server busy)", time.monotonic() - self.opened_at
        )
        return True

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    def live_groups(self) -> list[str] | None:
        """Return the groups this page listens to, or None when its object does not exist (sync: database hop)."""
        raise NotImplementedError

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Leave the session watch and the groups; a layer that is down cannot stop the goodbye."""
        session_watch.discard(self)
        try:
            await super().websocket_disconnect(message)
        except StopConsumer:
            raise
        except Exception:
            logger.warning("live socket left its groups uncleanly", exc_info=True)
            raise StopConsumer() from None

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

    # Sockets whose group carries every project's events (the fleet, the triggers) pass an
    # event on only when the user may see its experiment; a page's own group is checked at join.
    project_filtered = False

    async def _may_forward(self, event: dict[str, Any]) -> bool:
        """Return whether the user may see the experiment the event is about (cached per socket)."""
        experiment_id = event.get("experiment_id")
        if not self.project_filtered or not isinstance(experiment_id, int):
            return True
        return await self._may_see(experiment_id)

    async def _may_see(self, experiment_id: int) -> bool:
        """Return whether the user may see this experiment (cached per socket)."""
        seen: dict[int, bool] = self.__dict__.setdefault("_experiments_seen", {})
        if experiment_id not in seen:
            seen[experiment_id] = await database_sync_to_async(may_see_experiment, thread_sensitive=False)(
                self.scope.get("user"), experiment_id
            )
        return seen[experiment_id]

    async def forward(self, event: dict[str, Any]) -> None:
        """Send one channel-layer event to the browser as JSON (if the user may see its experiment)."""
        if await self._may_forward(event):
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

    async def run_log(self, event: dict[str, Any]) -> None:
        """New lines of a run's stdout/stderr (the experiment page's live log tail)."""
        await self.forward(event)

    async def layer_resync(self, event: dict[str, Any]) -> None:
        """The channel layer reconnected to Redis: events may have been lost, the page catches up."""
        await self.send(text_data=json.dumps({"type": "resync", "reason": "live events may have been lost"}))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the handler of the message's type; forward event types without a handler.

        A producer added later (a new dotted event type) then reaches the page without a
        change here, and an odd message is logged instead of killing the connection.
        Unlike channels' own dispatch, no database clean-up hop runs before each message:
        the handlers that touch the database do it in their own hop (database_sync_to_async),
        and one hop per frame per socket would queue every metric batch behind the others.
        """
        kind = message.get("type", "")
        name = kind.replace(".", "_") if isinstance(kind, str) else ""
        handler = getattr(self, name, None) if name and not name.startswith("_") else None
        if handler is not None:
            await handler(message)
            return
        if isinstance(kind, str) and kind.startswith("websocket."):
            raise ValueError(f"No handler for message type {kind}")
        if isinstance(kind, str) and "." in kind:
            await self.forward(message)
            return
        logger.warning("live consumer dropped an event of type %r", kind)


@requires_permission("experiments.view_experiment")
class ExperimentConsumer(LiveConsumer):
    """/ws/experiments/<id>/: metric batches, state changes, progress and triggers of one experiment."""

    def live_groups(self) -> list[str] | None:
        """Return the experiment's group, or None when it does not exist."""
        experiment_id = int(self.scope["url_route"]["kwargs"]["experiment_id"])
        # One outside the user's projects is refused as a missing one.
        exists = may_see_experiment(self.scope.get("user"), experiment_id)
        return [experiment_group(experiment_id)] if exists else None


@requires_permission("experiments.view_experiment")
class FleetConsumer(LiveConsumer):
    """/ws/fleet/: every experiment's state changes and latest values (of the user's projects)."""

    project_filtered = True

    def live_groups(self) -> list[str] | None:
        """Return the fleet group."""
        return [FLEET_GROUP]


@requires_permission("control.view_device")
class GpusConsumer(LiveConsumer):
    """/ws/gpus/: the worker inventory's GPU stats."""

    def live_groups(self) -> list[str] | None:
        """Return the GPU stats group."""
        return [GPUS_GROUP]

    async def gpus_stats(self, event: dict[str, Any]) -> None:
        """Forward a worker's device numbers, naming a device's holder only to those who may see it."""
        devices = []
        for row in event.get("devices") or []:
            experiment_id = row.get("experiment_id")
            if isinstance(experiment_id, int) and not await self._may_see(experiment_id):
                row = {**row, "leased_run_id": None, "experiment_id": None, "experiment_name": None}
            devices.append(row)
        await self.send(text_data=encode_event({**event, "devices": devices}))


@requires_permission("control.view_triggerevent")
class TriggersConsumer(LiveConsumer):
    """/ws/triggers/: every policy trigger as it fires, waits for approval and is acted on."""

    project_filtered = True

    def live_groups(self) -> list[str] | None:
        """Return the triggers group."""
        return [TRIGGERS_GROUP]


class SessionWatch:
    """Closes (4401) every open socket of this process whose session ended, within a few seconds.

    Why a periodic check rather than logout/user-save signals: it sees every way a session
    ends (logout, expiry, a deleted session row, a user deactivated by a bulk update, a
    password changed anywhere, the user deleted) and needs no channel layer, which may be
    down at that very moment. It costs two queries per interval for all sockets together.
    """

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[LiveConsumer] = weakref.WeakSet()
        # Each socket belongs to the event loop it was accepted on (tests run one loop each).
        self._loops: weakref.WeakKeyDictionary[LiveConsumer, asyncio.AbstractEventLoop] = (
            weakref.WeakKeyDictionary()
        )
        self._task: asyncio.Task[None] | None = None

    def add(self, consumer: LiveConsumer) -> None:
        """Watch the session of a socket that was just accepted."""
        if consumer.session_ref is None:
            return
        loop = asyncio.get_running_loop()
        self._sockets.add(consumer)
        self._loops[consumer] = loop
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="live-session-watch")

    def discard(self, consumer: LiveConsumer) -> None:
        """Stop watching a socket that closed."""
        self._sockets.discard(consumer)

    async def _run(self) -> None:
        interval = float(getattr(settings, "LIVE_SESSION_RECHECK_SECONDS", DEFAULT_SESSION_RECHECK_SECONDS))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            watched = [c for c in list(self._sockets) if self._loops.get(c) is loop]
            if not watched:
                return  # the next accepted socket starts a new watch
            try:
                ended = await database_sync_to_async(sessions_ended)(
                    sessions={c.session_ref for c in watched if c.session_ref}
                )
            except Exception:  # the database may be briefly away; try again next interval
                logger.warning("live session check failed", exc_info=True)
                continue
            for consumer in watched:
                if consumer.session_ref in ended:
                    self._sockets.discard(consumer)
                    try:
                        await consumer.close(code=CLOSE_UNAUTHENTICATED)
                    except Exception:
                        logger.debug("socket already gone", exc_info=True)


session_watch = SessionWatch()
