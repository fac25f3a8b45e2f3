"""URL routes of the dashboard."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from .api import api
from .health import healthz

urlpatterns = [
    path("", include("experiments.urls")),
    path("", include("experiments.live_urls")),
    path("", include("control.urls")),
    path("", include("control.trigger_urls")),
    path("", include("experiments.serving_urls")),
    path("api/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
