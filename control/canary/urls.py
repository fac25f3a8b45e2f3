"""Routes of a model's deployment page (namespace "deployments"); the registry page and serving are experiments.registry.urls."""

from __future__ import annotations

from django.urls import path

import control.canary.views as views

app_name = "deployments"

urlpatterns = [
    path("registry/<slug:model_name>/", views.model_page, name="model"),
    path("registry/<slug:model_name>/live.json", views.model_live, name="live"),
    path("registry/<slug:model_name>/promote", views.promote_view, name="promote"),
    path("registry/<slug:model_name>/canary/rollback", views.canary_rollback_view, name="canary_rollback"),
    path("registry/<slug:model_name>/ab/cancel", views.ab_test_cancel_view, name="ab_cancel"),
]
