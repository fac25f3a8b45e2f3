"""A URL conf that mounts the metrics router on an API of its own, as crucible_ui/api.py does.

The history tests run against it so that they do not depend on where the main API mounts
the router; test_the_history_endpoint_is_part_of_the_api checks the real mount.
"""

from __future__ import annotations

from django.urls import path
from ninja import NinjaAPI

from crucible_ui.access import api_access_install
from crucible_ui.api_auth import API_AUTH
from experiments.live.api import router

api = api_access_install(NinjaAPI(urls_namespace="live_test_api", auth=API_AUTH))
api.add_router("/experiments", router)

urlpatterns = [path("api/", api.urls)]
