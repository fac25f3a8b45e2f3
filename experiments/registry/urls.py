"""Routes of the model registry pages and the serving endpoints."""

from __future__ import annotations

from django.urls import path

import experiments.registry.views as serving_views

app_name = "registry"

urlpatterns = [
    path("registry/", serving_views.registry_page, name="index"),
    path("registry/<slug:model_name>/", serving_views.model_page, name="model"),
    path("registry/<slug:model_name>/live.json", serving_views.model_live, name="live"),
    path("registry/<slug:model_name>/promote", serving_views.promote_view, name="promote"),
    path("registry/<slug:model_name>/rollback", serving_views.rollback_view, name="rollback"),
    path(
        "registry/<slug:model_name>/canary/rollback",
        serving_views.canary_rollback_view,
        name="canary_rollback",
    ),
    path("serve/<slug:model_name>/predict", serving_views.predict_view, name="predict"),
    path("serve/<slug:model_name>/feedback", serving_views.feedback_view, name="feedback"),
]
