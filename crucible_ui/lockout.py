"""Login throttling with django-axes: what a failure counts against, and how a lockout answers.

Axes records every failed login (the login page, the admin login, a wrong API token) and
refuses further attempts once AXES_FAILURE_LIMIT is reached, before any password is hashed:
a locked-out guesser costs the web process one query, not an Argon2 hash.
"""

from __future__ import annotations

import math
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_client_username, get_cool_off, get_lockout_message
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

# A page answers a lockout with HTML; these callers (and any request carrying a token) get JSON.
_JSON_PREFIXES = ("/api/", "/serve/")
# MLflow's clients read its own error shape (experiments/mlflow/errors.py).
_MLFLOW_PREFIX = "/api/2.0/mlflow"


def lockout_parameters(request: Any, credentials: dict[str, Any] | None = None) -> list[str]:
    """Return what failures count against: the user and the address, or only the address.

    A failure with no username (a wrong API token) counts against its address alone:
    counted against "no username" it would lock out every token caller at once.
    """
    if isinstance(request, HttpRequest):
        username = get_client_username(request, credentials)
    else:  # an AccessAttempt row, as axes' cache handler passes one
        username = getattr(request, "username", None)
    return ["username", "ip_address"] if username else ["ip_address"]


def wants_json(request: HttpRequest) -> bool:
    """Return True for API and serving callers, which read JSON rather than a page."""
    return "Authorization" in request.headers or request.path.startswith(_JSON_PREFIXES)


def retry_after_seconds(request: HttpRequest) -> int | None:
    """Return how long a lockout lasts (AXES_COOLOFF_TIME) in whole seconds; None when it is permanent."""
    cool_off = get_cool_off(request)
    return math.ceil(cool_off.total_seconds()) if cool_off else None


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """Answer 429: JSON {"detail": ...} for API callers, the lockout page for people; Retry-After set."""
    retry_after = retry_after_seconds(request)
    response: HttpResponse
    if request.path.startswith(_MLFLOW_PREFIX):
        response = JsonResponse(
            {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": str(get_lockout_message())}, status=429
        )
    elif wants_json(request):
        response = JsonResponse({"detail": str(get_lockout_message())}, status=429)
    else:
        response = TemplateResponse(
            request,
            "registration/locked_out.html",
            {"retry_after_minutes": math.ceil(retry_after / 60) if retry_after else None},
            status=429,
        )
        response.render()
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


class RequestAxesBackend(AxesStandaloneBackend):
    """Axes' lockout check for every login that comes with a request (pages, admin).

    authenticate() without a request comes from code in this process (a management command,
    the test client's login()), not from a network caller: there is nobody to throttle, and
    axes would raise instead of letting the next backend decide.
    """

    def authenticate(  # type: ignore[override]
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Raise PermissionDenied while the caller is locked out; otherwise let the next backend decide."""
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)  # type: ignore[no-any-return]
