"""GET /healthz: database, Redis and live Celery workers (filled in by the infrastructure work)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """Return the health of each part as JSON."""
    return JsonResponse({"status": "unknown"}, status=503)
