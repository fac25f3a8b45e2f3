"""URLs of the live view's own pages (namespace "live"): the Fleet and Compare pages, run logs."""

from __future__ import annotations

from django.urls import path

from experiments.live import views

app_name = "live"
urlpatterns = [
    path("fleet/", views.fleet, name="fleet"),
    path("fleet/rows/", views.fleet_rows_fragment, name="fleet_rows"),
    path("compare/", views.compare, name="compare"),
    path("experiments/<int:experiment_id>/runs/<int:run_id>/log/", views.run_log, name="run_log"),
]
