"""The JSON API (django-ninja): one NinjaAPI, with a router per area; docs at /api/docs."""

from __future__ import annotations

from ninja import NinjaAPI

api = NinjaAPI(title="Crucible Control API", version="1", urls_namespace="api")

# Each area's router is added here, so this file lists every part of the API, e.g.:
# from experiments.api import router as experiments_router
# api.add_router("/experiments", experiments_router)
