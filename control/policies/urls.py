"""URLs of the Triggers page and decisions on a trigger (namespace "triggers")."""

from __future__ import annotations

from django.urls import path

import control.policies.views as trigger_views

app_name = "triggers"
urlpatterns = [
    path("triggers/", trigger_views.triggers_page, name="list"),
    path("triggers/rows/", trigger_views.trigger_rows_fragment, name="rows"),
    path("triggers/<int:trigger_id>/<str:decision>/", trigger_views.trigger_decide, name="decide"),
]
