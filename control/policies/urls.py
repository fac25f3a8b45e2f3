"""URLs of the Triggers page and decisions on a trigger (namespace "triggers")."""

from __future__ import annotations

from django.urls import path

from control.policies import views

app_name = "triggers"
urlpatterns = [
    path("triggers/", views.triggers_page, name="list"),
    path("triggers/rows/", views.trigger_rows_fragment, name="rows"),
    path("triggers/<int:trigger_id>/<str:decision>/", views.trigger_decide, name="decide"),
]
