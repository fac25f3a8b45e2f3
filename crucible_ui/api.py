"""The JSON API (django-ninja): one NinjaAPI, with a router per area; docs at /api/docs.

Errors share two shapes, documented on every operation:
- 422 `{"detail": [{"loc": ["body", "config", "epochs"], "msg": "...", "type": "..."}]}` when
  fields were refused (ninja's own type checks and our domain checks alike);
- any other status `{"detail": "<a sentence>"}` (400 malformed JSON, 401, 403, 404, 405, 409,
  413 body too big, 415 body not JSON, 500) — also where Django answers before the API runs
  (crucible_ui/api_errors.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, cast

import orjson
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.template import Context, Engine
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError
from ninja.openapi.docs import ABS_TPL_PATH, Swagger
from ninja.parser import Parser

from control.scheduling.api import router as scheduler_router
from crucible_ui.access import api_access_install
from crucible_ui.api_auth import API_AUTH, TokenAuth
from experiments.api.bodies import MAX_JSON_BODY_BYTES
from experiments.api.routes import router as experiments_router
from experiments.api.runs import router as runs_router
from experiments.live.api import router as metrics_router

logger = logging.getLogger("crucible_ui.api")

# ninja puts the view's parameter name in error paths (["body", "payload", "name"]), but
# clients know fields, not Python arguments. Operations therefore name a body schema
# `payload` and a query schema `filters`, and these names are dropped from the paths.
_PARAM_NAMES = frozenset({"payload", "filters"})


class LocalSwagger(Swagger):
    """Swagger UI from the files bundled in the ninja package: the docs work offline, no CDN.

    ninja falls back to its CDN template when "ninja" is not in INSTALLED_APPS; this
    always renders the local one (the assets themselves are served by staticfiles).
    """

    _engine = Engine(
        dirs=[str(ABS_TPL_PATH.parent)],
        libraries={"static": "django.templatetags.static"},
    )

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:  # type: ignore[override]
        """Return the Swagger UI page for this API."""
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        html = self._engine.get_template("ninja/swagger.html").render(
            Context(
                {
                    "swagger_settings": json.dumps(self.settings, indent=1),
                    "api": api,
                    "add_csrf": True,
                    "csrf_token": get_token(request),
                }
            )
        )
        return HttpResponse(html)


def docs_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let the docs and the schema through for a bearer token (as the API) or a logged-in session.

    A wrong token answers 401 in JSON; a caller with neither goes to the login page.
    """
    token_auth = TokenAuth()
    with_login = login_required(view)

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.headers.get("Authorization"):
            return with_login(request, *args, **kwargs)
        try:
            user = token_auth(request)
        except AuthenticationError as exc:
            return authentication_error(request, exc)
        if user is None:
            return authentication_error(request, AuthenticationError())
        return view(request, *args, **kwargs)

    return wrapped


class OrjsonParser(Parser):
    """Parse JSON bodies with orjson (a metric batch is up to 10,000 points), as the standard parser would.

    What orjson refuses and json.loads takes (a bare NaN, integers beyond 64 bits) is handed
    to json.loads, so every body is read exactly as before, only faster.
    """

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], orjson.loads(request.body))
        except orjson.JSONDecodeError:
            return cast(dict[str, Any], json.loads(request.body))


api = NinjaAPI(
    title="Crucible Control API",
    version="1",
    description=(
        "Create experiments, read them and fire lifecycle events. Authenticate with the browser "
        "session (unsafe methods need the X-CSRFToken header) or `Authorization: Bearer <token>` "
        "(`manage.py api_token <username>`). Field errors answer 422 with "
        '`{"detail": [{"loc": [...], "msg": "..."}]}`; other errors `{"detail": "..."}`.'
    ),
    urls_namespace="api",
    auth=API_AUTH,
    docs=LocalSwagger(),
    docs_decorator=docs_login_required,
    parser=OrjsonParser(),
)
# Every operation checks the access it declares (deny by default): crucible_ui/access.py.
api_access_install(api)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """Answer 422 with every refused field as {loc, msg, type}, whoever refused it."""
    detail = []
    for error in exc.errors:
        loc = list(error.get("loc", ()))
        if len(loc) >= 2 and loc[0] in ("body", "query") and loc[1] in _PARAM_NAMES:
            del loc[1]
        detail.append(
            {"loc": loc, "msg": error.get("msg", "invalid"), "type": error.get("type", "value_error")}
        )
    return api.create_response(request, {"detail": detail}, status=422)


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    """Answer 401 saying how to authenticate."""
    message = exc.message
    if message == AuthenticationError().message:
        message = "Authentication required: log in, or send Authorization: Bearer <token>"
    response = api.create_response(request, {"detail": message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    """Answer 404 naming what was not found."""
    return api.create_response(request, {"detail": str(exc) or "Not found"}, status=404)


@api.exception_handler(PermissionDenied)
def permission_denied(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    """Answer 403 with the reason."""
    return api.create_response(request, {"detail": str(exc) or "Permission denied"}, status=403)


@api.exception_handler(RequestDataTooBig)
def body_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    """Answer 413: a body Django stopped reading at its bound (one sent without Content-Length)."""
    return api.create_response(request, {"detail": f"body: at most {MAX_JSON_BODY_BYTES} bytes"}, status=413)


@api.exception_handler(Exception)
def server_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    """Answer 500 in the API's shape, naming nothing internal; the traceback goes to the log."""
    logger.error("API error on %s %s", request.method, request.path, exc_info=exc)
    return api.create_response(request, {"detail": "Internal server error: it has been logged."}, status=500)


# --- routers: one line per area; this list is the whole API ---------------------------------
# Each router's operations get API_AUTH (session + CSRF, or bearer token) and the error
# shapes above. Add a line per area: api.add_router("/<prefix>", <area>_router).
api.add_router("/experiments", experiments_router)
api.add_router("/experiments", metrics_router)  # GET /api/experiments/{id}/metrics
api.add_router("/scheduler", scheduler_router)  # GET /api/scheduler/queue, /api/scheduler/gpus
api.add_router("/runs", runs_router)  # external runs: POST /api/runs, /api/runs/{id}/metrics, ...
