"""The Redis pub/sub channel layer, plus one event: "layer.resync" when its Redis connection came back.

channels-redis (4.3) reconnects and re-subscribes by itself after Redis went away, but
says nothing: whatever was published meanwhile is gone, and an open page would show a
hole in its curves until it is reloaded. This layer tells every consumer of the process
(a "layer.resync" message on its channel) as soon as the subscription is back, and the
page then fetches what it missed from the history endpoint. Selected in settings by
CHANNEL_LAYERS["default"]["BACKEND"].
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close, create_pool, decode_hosts
from redis import asyncio as aioredis
from redis.asyncio.client import PubSub

logger = logging.getLogger(__name__)

RESYNC_EVENT = "layer.resync"


class _WatchedPubSub(PubSub):
    """A PubSub that reports each reconnection of its connection (after re-subscribing)."""

    def __init__(self, *args: Any, on_reconnect: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_reconnect = on_reconnect

    async def on_connect(self, connection: Any) -> None:
        """Re-subscribe (the library's part), then say the subscription is back."""
        await super().on_connect(connection)
        # redis-py calls this only on a RE-connect: the first connection is made before
        # the callback is registered.
        self._on_reconnect()


class _ResyncShard(RedisSingleShardConnection):  # type: ignore[misc]
    """One Redis host's connection; broadcasts a resync when its subscriber connection was lost and is back."""

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._lost = False

    def _ensure_redis(self) -> None:
        if self._redis is None:  # type: ignore[has-type]  # set by the parent class
            pool = create_pool(self.host)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._pubsub = _WatchedPubSub(pool, on_reconnect=self._reconnected)

    async def _do_receiving(self) -> None:
        # The library's loop, plus: an error means messages may have been lost; the first
        # successful read after it (the connection is back) triggers a resync.
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if self._lost:
                        self._lost = False
                        self._broadcast_resync()
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception:
                if not self._lost:
                    logger.warning("channel layer lost its Redis subscription; retrying", exc_info=True)
                self._lost = True
                await asyncio.sleep(1)

    def _reconnected(self) -> None:
        self._lost = False  # the receive loop need not say it again
        self._broadcast_resync()

    def _broadcast_resync(self) -> None:
        """Put a resync event on every channel of this process (it is cheap and harmless twice)."""
        layer = self.channel_layer
        data = layer.channel_layer.serialize({"type": RESYNC_EVENT})
        logger.info("channel layer reconnected to Redis; %d open channels resync", len(layer.channels))
        for queue in list(layer.channels.values()):
            queue.put_nowait(data)


class _ResyncLoopLayer(RedisPubSubLoopLayer):  # type: ignore[misc]
    def __init__(self, hosts: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(hosts, *args, **kwargs)
        self._shards = [_ResyncShard(host, self) for host in decode_hosts(hosts)]


class ResyncingPubSubChannelLayer(RedisPubSubChannelLayer):  # type: ignore[misc]
    """RedisPubSubChannelLayer whose consumers get a "layer.resync" event after a Redis reconnection."""

    def _get_layer(self) -> Any:
        # The parent's method with our per-loop layer class (one layer per event loop).
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = _ResyncLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer
