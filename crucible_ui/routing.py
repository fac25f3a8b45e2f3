"""Websocket routes: /ws/experiments/<id>/, /ws/fleet/, /ws/gpus/ (consumers live in the apps)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from crucible_ui.access import declared_consumer
from experiments.live.consumers import ExperimentConsumer, FleetConsumer, GpusConsumer, TriggersConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/experiments/<int:experiment_id>/", declared_consumer(ExperimentConsumer)),
    path("ws/fleet/", declared_consumer(FleetConsumer)),
    path("ws/gpus/", declared_consumer(GpusConsumer)),
    path("ws/triggers/", declared_consumer(TriggersConsumer)),
]
