"""Routes of the model registry pages and the serving endpoints."""

from __future__ import annotations

from django.urls import path

from experiments.registry import views

app_name = "registry"

urlpatterns = [
    path("registry/", views.registry_page, name="index"),
    path("registry/<slug:model_name>/rollback", views.rollback_view, name="rollback"),
    path("serve/<slug:model_name>/predict", views.predict_view, name="predict"),
    path("serve/<slug:model_name>/feedback", views.feedback_view, name="feedback"),
]
