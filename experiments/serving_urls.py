"""Routes of the model registry page and the serving endpoints."""

from __future__ import annotations

from django.urls import path

from . import serving_views

app_name = "registry"

urlpatterns = [
    path("registry/", serving_views.registry_page, name="index"),
    path("registry/<slug:model_name>/rollback", serving_views.rollback_view, name="rollback"),
    path("serve/<slug:model_name>/predict", serving_views.predict_view, name="predict"),
    path("serve/<slug:model_name>/feedback", serving_views.feedback_view, name="feedback"),
]
