"""Control pages (GPUs, queue)."""

from __future__ import annotations

from django.urls import path

import control.scheduling.views as views

app_name = "control"
urlpatterns = [
    path("gpus/", views.gpus, name="gpus"),
    path("gpus/rows/", views.gpu_rows, name="gpu_rows"),
]
