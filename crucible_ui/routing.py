"""Websocket routes: /ws/experiments/<id>/, /ws/fleet/, /ws/gpus/ (consumers live in the apps)."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
