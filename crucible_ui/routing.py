"""Websocket routes: /ws/experiments/<id>/, /ws/fleet/, /ws/gpus/ (consumers live in the apps)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from experiments.live.consumers import ExperimentConsumer, FleetConsumer, GpusConsumer, TriggersConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/experiments/<int:experiment_id>/", ExperimentConsumer.as_asgi()),
    path("ws/fleet/", FleetConsumer.as_asgi()),
    path("ws/gpus/", GpusConsumer.as_asgi()),
    path("ws/triggers/", TriggersConsumer.as_asgi()),
]
