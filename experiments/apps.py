"""App config of the experiment domain."""

from __future__ import annotations

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    """Experiments, runs, metrics, the model registry and the audit log."""

    name = "experiments"
    default_auto_field = "django.db.models.BigAutoField"
