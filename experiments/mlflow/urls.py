"""Routes of the MLflow tracking API, mounted at /api/2.0/ (crucible_ui/urls.py)."""

from __future__ import annotations

from django.urls import path

from experiments.mlflow import views

app_name = "mlflow"

urlpatterns = [
    path("mlflow/experiments/create", views.experiments_create, name="experiments_create"),
    path("mlflow/experiments/get", views.experiments_get, name="experiments_get"),
    path("mlflow/experiments/get-by-name", views.experiments_get_by_name, name="experiments_get_by_name"),
    path("mlflow/experiments/search", views.experiments_search, name="experiments_search"),
    path("mlflow/experiments/set-experiment-tag", views.experiments_set_tag, name="experiments_set_tag"),
    path("mlflow/runs/create", views.runs_create, name="runs_create"),
    path("mlflow/runs/get", views.runs_get, name="runs_get"),
    path("mlflow/runs/update", views.runs_update, name="runs_update"),
    path("mlflow/runs/search", views.runs_search, name="runs_search"),
    path("mlflow/runs/log-metric", views.runs_log_metric, name="runs_log_metric"),
    path("mlflow/runs/log-batch", views.runs_log_batch, name="runs_log_batch"),
    path("mlflow/runs/log-parameter", views.runs_log_parameter, name="runs_log_parameter"),
    path("mlflow/runs/set-tag", views.runs_set_tag, name="runs_set_tag"),
    path("mlflow/metrics/get-history", views.metrics_get_history, name="metrics_get_history"),
    # Artifacts are out of scope: every artifact call gets one clear answer.
    path("mlflow/artifacts/<path:rest>", views.artifacts, name="artifacts_list"),
    path("mlflow-artifacts/<path:rest>", views.artifacts, name="artifacts"),
    path("mlflow/<path:rest>", views.not_offered, name="not_offered"),
]
