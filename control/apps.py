"""App config of the control layer."""

from __future__ import annotations

from django.apps import AppConfig


class ControlConfig(AppConfig):
    """Policies, engine, scheduler and worker inventory."""

    name = "control"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register transition hooks and Celery worker signals."""
        import control.canary.rollouts
        import control.policies.signals
        import control.scheduling.signals  # noqa: F401
