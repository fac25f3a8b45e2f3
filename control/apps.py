"""App config of the control layer."""

from __future__ import annotations

from django.apps import AppConfig


class ControlConfig(AppConfig):
    """Policies, engine, scheduler and worker inventory."""

    name = "control"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Install the effect table of lifecycle events and connect the Celery worker signals."""
        # Imported here: both import models, which Django allows only once the apps are loaded.
        import control.scheduling.signals  # noqa: F401  (connects to Celery's worker signals)
        from control.lifecycle import EFFECTS
        from experiments.effects import effects_install

        effects_install(EFFECTS)
