"""App config of the experiment domain."""

from __future__ import annotations

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    """Experiments, runs, metrics, the model registry and the audit log."""

    name = "experiments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Point the recipe catalog at the CRUCIBLE_RECIPES setting (web and worker read the same one)."""
        from django.conf import settings

        from experiments.recipes import RECIPES

        RECIPES.configure(getattr(settings, "CRUCIBLE_RECIPES", None))
