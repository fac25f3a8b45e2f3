"""A channel-layer outage is logged once with its cause, not once per metric flush."""

from __future__ import annotations

import logging
import socket

import pytest
from django.test import override_settings

from experiments.events import send_messages


def _dead_redis_url() -> str:
    # A port nothing listens on: each send fails at once with "connection refused".
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_an_outage_logs_one_traceback_then_counts_and_says_when_it_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_dead_redis_url()]},
        }
    }
    live = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    batch = [("experiment-1", {"type": "metrics.batch", "points": []})]
    with caplog.at_level(logging.WARNING, logger="experiments.events"):
        with override_settings(CHANNEL_LAYERS=dead):
            for _ in range(20):
                send_messages(batch)
        outage = [r for r in caplog.records if r.name == "experiments.events"]
        assert len(outage) == 1, [r.getMessage() for r in outage]
        assert outage[0].exc_info is not None and "metrics.batch" in outage[0].getMessage()

        with override_settings(CHANNEL_LAYERS=live):
            send_messages(batch)
            send_messages(batch)
    after = [r.getMessage() for r in caplog.records if r.name == "experiments.events"][1:]
    assert after == ["channel layer reachable again after 20 failed sends"]
