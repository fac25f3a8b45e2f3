"""Project-wide page plumbing: the favicon address and friendly error pages in every mode."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.templatetags.static import static

from crucible_ui.api_errors import API_PREFIX
from experiments.permissions import public

logger = logging.getLogger(__name__)


@public
def favicon(request: HttpRequest) -> HttpResponse:
    """Redirect /favicon.ico, which browsers ask for on pages that name no icon, to the static icon."""
    # Resolved per request, not at import: a hashed static storage knows the name only after collectstatic.
    return HttpResponsePermanentRedirect(static("favicon.svg"))


class FriendlyNotFoundMiddleware:
    """Answer a missing page with the dashboard's own 404 page, also with DEBUG on.

    With DEBUG, Django answers Http404 with its technical page (URL patterns, settings), which
    is what `make run` shows a person who follows a stale link. The API keeps its JSON errors.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        # No view matched: the resolver's 404 never reaches process_exception.
        if (
            response.status_code == 404
            and getattr(request, "resolver_match", None) is None
            and self._applies(request)
            and "text/html" in response.get("Content-Type", "")
        ):
            return self._page(request, "There is no page at this address.")
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Render the 404 page for an Http404 a view raised; anything else goes on as before."""
        if isinstance(exception, Http404) and self._applies(request):
            return self._page(request, str(exception))
        return None

    @staticmethod
    def _applies(request: HttpRequest) -> bool:
        return not request.path.startswith(API_PREFIX)

    @staticmethod
    def _page(request: HttpRequest, message: str) -> HttpResponse:
        return render(request, "404.html", {"exception": message}, status=404)
