"""Experiment pages."""

from __future__ import annotations

from typing import Any

app_name = "experiments"
urlpatterns: list[Any] = []
