"""JSON errors for every path under /api/, including those Django answers before the API runs.

The API's own errors come from its exception handlers (crucible_ui/api.py). This middleware
covers the rest: an unknown /api/ path (404), a method an endpoint does not take (405), a body
that is too big (413) or not JSON (415), and an exception no handler took (500). Each answers
`{"detail": "<a sentence>"}` like every other API error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from experiments.api.bodies import json_body_refusal, max_body_bytes

logger = logging.getLogger("crucible_ui.api")

API_PREFIX = "/api/"
# The MLflow tracking API answers every error itself, in MLflow's shape (experiments/mlflow/views.py).
MLFLOW_PREFIX = "/api/2.0/mlflow"
# Headers of an error response that tell the client what to do next: kept on the JSON answer.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def api_error(status: int, detail: str) -> JsonResponse:
    """Return the API's error answer: {"detail": detail} with the status."""
    return JsonResponse({"detail": detail}, status=status)


def _detail(request: HttpRequest, response: HttpResponse) -> str:
    status = response.status_code
    if status == 404:
        return f"Not found: no API resource at {request.path}"
    if status == 405:
        return f"Method not allowed: {request.path} takes {response.get('Allow', 'other methods')}"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Error {status}"


class ApiJsonErrorsMiddleware:
    """Refuse unreadable bodies up front and turn every non-JSON error under /api/ into JSON."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Answer an /api/ request; other paths pass untouched."""
        if not request.path.startswith(API_PREFIX) or request.path.startswith(MLFLOW_PREFIX):
            return self.get_response(request)
        refusal = json_body_refusal(request, max_bytes=max_body_bytes(request.path))
        if refusal is not None:
            return api_error(*refusal)
        response = self.get_response(request)
        if response.status_code < 400 or response.get("Content-Type", "").startswith("application/json"):
            return response
        answer = api_error(response.status_code, _detail(request, response))
        for header in _KEPT_HEADERS:
            if header in response:
                answer[header] = response[header]
        return answer

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        """Answer an exception of an /api/ view in JSON; Django's own answers are converted above."""
        if not request.path.startswith(API_PREFIX) or request.path.startswith(MLFLOW_PREFIX):
            return None
        if isinstance(exc, RequestDataTooBig):
            return api_error(413, f"body: at most {max_body_bytes(request.path)} bytes")
        if isinstance(exc, Http404 | PermissionDenied | SuspiciousOperation):
            return None  # Django answers these (404, 403, 400); __call__ makes them JSON
        logger.error("API error on %s %s", request.method, request.path, exc_info=exc)
        return api_error(500, "Internal server error: it has been logged.")
