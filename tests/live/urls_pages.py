"""The project's URL conf with the live pages included (as crucible_ui/urls.py is asked to)."""

from __future__ import annotations

from typing import Any

from django.urls import include, path

from crucible_ui.urls import urlpatterns as project_urlpatterns

urlpatterns: list[Any] = list(project_urlpatterns)
if not any(getattr(p, "namespace", None) == "live" for p in project_urlpatterns):
    urlpatterns.append(path("", include("experiments.live.urls")))
