"""Control pages (GPUs, queue)."""

from __future__ import annotations

from typing import Any

app_name = "control"
urlpatterns: list[Any] = []
