"""Crucible Control: the Django project (settings, routing, the Celery app)."""

from __future__ import annotations

from crucible_ui.celery import app as celery_app

__all__ = ["celery_app"]
