"""Experiment pages."""

from __future__ import annotations

from django.urls import path

from experiments import views

app_name = "experiments"
urlpatterns = [
    path("", views.experiment_list, name="list"),
    path("experiments/new/", views.experiment_create_view, name="create"),
    path("experiments/<int:experiment_id>/", views.experiment_detail, name="detail"),
    path(
        "experiments/<int:experiment_id>/actions/", views.experiment_actions_fragment, name="actions_fragment"
    ),
    path(
        "experiments/<int:experiment_id>/runs/<int:run_id>/artifacts/<str:name>",
        views.artifact_download,
        name="artifact_download",
    ),
    path(
        "experiments/<int:experiment_id>/pipeline/start/",
        views.experiment_pipeline_start,
        name="pipeline_start",
    ),
    path(
        "experiments/<int:experiment_id>/actions/<slug:event>/",
        views.experiment_action,
        name="action",
    ),
]
