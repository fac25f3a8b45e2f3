"""URLs of the live view's own pages (namespace "live"): the Fleet and Compare pages."""

from __future__ import annotations

from django.urls import path

import experiments.live.views as live_views

app_name = "live"
urlpatterns = [
    path("fleet/", live_views.fleet, name="fleet"),
    path("fleet/rows/", live_views.fleet_rows_fragment, name="fleet_rows"),
    path("compare/", live_views.compare, name="compare"),
]
