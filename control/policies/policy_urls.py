"""URLs of the policy page (namespace "policies"): list, edit, new, and the preview of an edit."""

from __future__ import annotations

from django.urls import path

from control.policies import policy_views

app_name = "policies"
urlpatterns = [
    path("policies/", policy_views.policy_list, name="list"),
    path("policies/new", policy_views.policy_new, name="new"),
    path("policies/preview", policy_views.policy_preview, name="preview"),
    path("policies/<int:policy_id>/edit", policy_views.policy_edit, name="edit"),
]
