"""URL routes of the dashboard."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from crucible_ui.api import api
from crucible_ui.health import healthz
from crucible_ui.pages import favicon
from experiments.permissions import public

urlpatterns = [
    path("", include("experiments.urls")),
    path("", include("experiments.live.urls")),
    path("", include("control.scheduling.urls")),
    path("", include("control.policies.urls")),
    path("", include("control.policies.policy_urls")),
    path("", include("experiments.registry.urls")),
    path("", include("control.canary.urls")),
    # The MLflow tracking API authenticates each call itself (experiments/mlflow/auth.py).
    path("api/2.0/", include("experiments.mlflow.urls")),
    path("api/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", public(auth_views.LoginView.as_view()), name="login"),
    path("logout/", public(auth_views.LogoutView.as_view()), name="logout"),
    # Browsers ask for /favicon.ico on pages that name no icon (the API docs, a JSON answer).
    path("favicon.ico", favicon, name="favicon"),
]
