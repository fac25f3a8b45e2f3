"""Kombu's Redis transport with the one fix that lets a Celery worker ride out a broker outage.

The crash it fixes (kombu 5.7 / Celery 5.7, reproduced with a real worker and a Redis stopped
for ten seconds): the worker loses its connection while a late-acknowledged task runs (a
training run holds its message unacknowledged for the whole run) and its consumer is waiting
in BRPOP (a free pool slot). Celery's reconnect path first calls `Connection.collect()`:
closing the consumer's channel fails on the pending BRPOP (the server is gone), so the channel
stays open, and collect() then detaches the transport from its connection
(`transport.client = None`). Celery next calls `connection.close()`, which closes that channel
again; this time it gets as far as restoring the unacknowledged message, which needs a new
Redis client, whose parameters come from `transport.client.hostname`: AttributeError. Kombu's
`ignore_errors` passes only connection errors, so the AttributeError ends the worker
("Unrecoverable error"). The same happens when the long task finishes after the reconnect and
acknowledges its message on the old channel — minutes after the outage.

No setting avoids it: broker_connection_retry(_on_startup) governs the retries that never
start, health_check_interval / retry_on_timeout / socket timeouts only decide how soon the
loss is seen, and worker_cancel_long_running_tasks_on_connection_loss would kill the training
runs we mean to keep (and runs after the close). Here a channel whose transport was detached
raises a *connection* error instead, which kombu and Celery already handle: the close is
abandoned, the late ack is logged as failed, and the message stays in Redis's unacked set,
from which kombu restores it after the visibility timeout (the run's database lease then makes
that second delivery do nothing).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    """A Redis channel that refuses to build a client once its transport was detached."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection of this channel was closed (reconnecting)")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params


class Transport(kombu_redis.Transport):
    """Kombu's Redis transport with the Channel above."""

    Channel = Channel
