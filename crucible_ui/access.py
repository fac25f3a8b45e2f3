"""Deny by default: every route is checked against the access it declares, and one that declares none is refused.

The declarations (`@public`, `@login_only`, `@requires_permission`) live in
experiments/permissions.py; this module enforces them at the three doors:

- HTTP: `DenyByDefaultMiddleware` checks each view of the URL resolver before it runs;
- the JSON API: `api_access_install` makes every django-ninja operation check its own
  declaration after the API has authenticated the caller (session or bearer token);
- websockets: `declared_consumer` wraps each consumer of crucible_ui/routing.py.

Routes whose views we do not write are declared here by route name (THIRD_PARTY_ROUTES), and
the Django admin keeps its own checks (DELEGATED_NAMESPACES). `route_access_table()` lists
what every route of the resolver declares; tests/security/test_route_access.py walks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.deprecation import MiddlewareMixin
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError

from crucible_ui.lockout import lockout_response
from experiments.api.tokens import TokenLockedOut, api_token_authenticate
from experiments.live.consumers import CLOSE_FORBIDDEN
from experiments.permissions import Access, Decision, access_of

logger = logging.getLogger(__name__)

# Namespaces whose views check access themselves, each with the reason it is safe to trust them.
DELEGATED_NAMESPACES: dict[str, str] = {
    "admin": "the admin site admits only active staff users, then checks each model's permissions",
    # Its clients send HTTP basic credentials, which the bearer check here would refuse.
    "mlflow": "the MLflow tracking API authenticates every call (bearer token or HTTP basic) and checks "
    "its permissions itself (experiments/mlflow/views.py)",
}

# Views we do not write, declared by route name ("namespace:name").
THIRD_PARTY_ROUTES: dict[str, Access] = {
    # django-ninja's own pages: the schema and the Swagger UI (the API's docs), and /api/
    # itself (ninja answers 404 there).
    "api:openapi-json": Access(),
    "api:openapi-view": Access(),
    "api:api-root": Access(),
}

# The APIs whose operations check their own declarations (api_access_install), by namespace.
_GUARDED_APIS: dict[str, NinjaAPI] = {}

UNDECLARED_MESSAGE = "This address declares no access rule, so it is refused."


def _is_ninja_operation(view: Any) -> bool:
    """Return whether the view is django-ninja's dispatcher of one API path (its operations declare access)."""
    return getattr(view, "__module__", "") == "ninja.operation"


@dataclass(frozen=True)
class RouteAccess:
    """One route of the resolver and what guards it."""

    name: str  # "namespace:name", or the pattern when the route has no name
    route: str  # the path pattern, e.g. "experiments/<int:experiment_id>/"
    view: Any
    access: Access | None  # None: delegated (see `delegated_to`) or undeclared
    delegated_to: str = ""
    methods: tuple[str, ...] = ()  # API operations: the methods of this operation

    @property
    def declared(self) -> bool:
        """Return whether something guards the route (a declaration or a trusted owner)."""
        return self.access is not None or bool(self.delegated_to)


def route_access(*, namespace: str, name: str | None, view: Any) -> tuple[Access | None, str]:
    """Return (declared access, delegated-to reason) of one resolved view; (None, "") when undeclared.

    API operations are delegated to the API that installed the guard (api_access_install):
    which operation runs depends on the method, and only the API knows the caller of a token.
    """
    top = namespace.split(":", 1)[0]
    if top in DELEGATED_NAMESPACES:
        return None, DELEGATED_NAMESPACES[top]
    if _is_ninja_operation(view):
        if namespace in _GUARDED_APIS:
            return None, "the API operation checks its own declaration (api_access_install)"
        return None, ""
    declared = access_of(view)
    if declared is not None:
        return declared, ""
    full_name = f"{namespace}:{name}" if namespace else (name or "")
    return THIRD_PARTY_ROUTES.get(full_name), ""


def _api_operations(api: NinjaAPI) -> dict[str, tuple[tuple[str, ...], Access | None]]:
    """Return each operation of the API by URL name: (its methods, its declaration)."""
    found: dict[str, tuple[tuple[str, ...], Access | None]] = {}
    for bound in api._get_bound_routers():
        for path_view in bound.path_operations.values():
            for operation in path_view.operations:
                url_name = getattr(operation, "url_name", None) or api.get_operation_url_name(
                    operation, router=bound.template
                )
                found[url_name] = (tuple(operation.methods), access_of(operation.view_func))
    return found


def _walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[RouteAccess]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = namespace
            if pattern.namespace:
                inner = f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
            yield from _walk(pattern.url_patterns, route, inner)
            continue
        if not isinstance(pattern, URLPattern):
            continue
        name = f"{namespace}:{pattern.name or route}" if namespace else (pattern.name or route)
        access, delegated = route_access(namespace=namespace, name=pattern.name, view=pattern.callback)
        api = _GUARDED_APIS.get(namespace)
        if api is not None and _is_ninja_operation(pattern.callback):
            # Report the operation's own declaration, which is what its guard enforces.
            methods, access = _api_operations(api).get(pattern.name or "", ((), None))
            yield RouteAccess(name=name, route=route, view=pattern.callback, access=access, methods=methods)
            continue
        yield RouteAccess(
            name=name, route=route, view=pattern.callback, access=access, delegated_to=delegated
        )


def route_access_table(urlconf: str | None = None) -> list[RouteAccess]:
    """Return every route of the URL conf with what guards it, in resolver order."""
    return list(_walk(get_resolver(urlconf).url_patterns, "", ""))


# --- HTTP ------------------------------------------------------------------------------------


def _bearer_user(request: HttpRequest) -> tuple[Any, str]:
    """Return (user, error) for an Authorization header: the token's user, or why it is refused.

    A wrong token counts as a failed login of the caller's address (django-axes); raises
    TokenLockedOut while that address is locked out.
    """
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None, "Authorization: expected 'Bearer <token>'"
    user = api_token_authenticate(request=request, raw=raw.strip())
    if user is None:
        return None, "Authorization: invalid or revoked API token"
    return user, ""


def _json_refusal(decision: Decision, message: str = "") -> JsonResponse:
    if decision is Decision.LOGIN:
        response = JsonResponse(
            {"detail": message or "Log in, or send an API token as 'Authorization: Bearer <token>'"},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    if decision is Decision.HIDDEN:
        return JsonResponse({"detail": "Not found."}, status=404)
    return JsonResponse({"detail": message or "You may not do that."}, status=403)


class DenyByDefaultMiddleware(MiddlewareMixin):
    """Refuse each request whose view declares no access, or whose declaration the caller does not meet.

    Sits after AuthenticationMiddleware (it reads request.user). Pages answer a login redirect,
    the plain 404 page (hidden objects) or the plain 403 page; `api` routes answer JSON.
    MiddlewareMixin keeps async views (/healthz) async under ASGI.
    """

    def process_view(
        self, request: HttpRequest, view: Any, view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        """Return a refusal, or None to let the view run."""
        match = request.resolver_match
        namespace = match.namespace if match else ""
        name = match.url_name if match else None
        access, delegated = route_access(namespace=namespace, name=name, view=view)
        if delegated:
            return None
        if access is None:
            logger.error("refused %s %s: its view %r declares no access", request.method, request.path, view)
            raise PermissionDenied(UNDECLARED_MESSAGE)
        user = request.user
        # A bearer token is judged wherever it is sent: API routes, and the schema and docs
        # (ninja's views, which take a token too); a wrong one is a JSON 401.
        if "Authorization" in request.headers:
            try:
                user, error = _bearer_user(request)
            except TokenLockedOut:
                return lockout_response(request)
            if error:
                return _json_refusal(Decision.LOGIN, error)
        decision = access.decide(user)
        if decision is Decision.ALLOWED:
            return None
        message = ""
        if decision is Decision.FORBIDDEN:
            message = f"Your account lacks the permission this needs: {', '.join(access.lacking(user))}."
        if access.api:
            return _json_refusal(decision, message)
        if decision is Decision.LOGIN:
            return redirect_to_login(request.get_full_path())
        if decision is Decision.HIDDEN:
            raise Http404("Not found.")
        raise PermissionDenied(message)


# --- the JSON API ----------------------------------------------------------------------------


def _refuse_operation(decision: Decision, lacking: list[str]) -> None:
    """Raise what the API answers for a refusal: ninja's own errors, JSON in any NinjaAPI."""
    if decision is Decision.LOGIN:
        raise AuthenticationError()
    if decision is Decision.HIDDEN:
        raise HttpError(404, "Not found.")
    raise HttpError(403, f"You lack the permission this needs: {', '.join(lacking)}.")


def _operation_guard(operation: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one API operation so that it checks its declaration after authentication, before it runs."""
    access = access_of(operation)

    def check(request: HttpRequest) -> None:
        if access is None:
            logger.error(
                "refused %s %s: API operation %r declares no access", request.method, request.path, operation
            )
            raise HttpError(403, UNDECLARED_MESSAGE)
        # request.auth: the user the API authenticated (bearer token or session).
        user = getattr(request, "auth", None) or request.user
        decision = access.decide(user)
        if decision is not Decision.ALLOWED:
            _refuse_operation(decision, access.lacking(user) if user.is_authenticated else [])

    if iscoroutinefunction(operation):

        @wraps(operation)
        async def guarded_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            await sync_to_async(check)(request)
            return await operation(request, *args, **kwargs)

        return guarded_async

    @wraps(operation)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        check(request)
        return operation(request, *args, **kwargs)

    return guarded


def api_access_install(api: NinjaAPI) -> NinjaAPI:
    """Make every operation of the API check its access declaration; call before api.urls is read."""
    # "operation" mode wraps the function ninja calls once it has authenticated the caller,
    # so a bearer token's user is known; validation errors (422) come first, as before.
    api.add_decorator(_operation_guard, mode="operation")
    _GUARDED_APIS[api.urls_namespace] = api
    return api


# --- websockets ------------------------------------------------------------------------------


class DeclaredConsumer:
    """An ASGI app running a consumer only for callers its class-level declaration admits.

    A refused socket is accepted and closed at once with 4401/4403/4404, so that the page
    sees why and stops reconnecting (a bare refusal looks like a network error).
    """

    def __init__(self, consumer_class: type, **initkwargs: Any) -> None:
        self.consumer_class = consumer_class
        self.access = access_of(consumer_class)
        self.app = consumer_class.as_asgi(**initkwargs)  # type: ignore[attr-defined]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run a declared consumer (it checks its declaration itself), or refuse an undeclared one."""
        if self.access is not None:
            # The consumer decides on its declaration in the one database hop that also reads
            # the session (experiments.live.consumers.LiveConsumer.authorize): a second hop
            # here would halve what a reconnect storm can admit.
            await self.app(scope, receive, send)
            return
        logger.error("refused websocket %s: %s declares no access", scope.get("path"), self.consumer_class)
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN})


def declared_consumer(consumer_class: type, **initkwargs: Any) -> Any:
    """Return the ASGI app of a consumer guarded by its declaration (for websocket routes).

    Typed Any like Consumer.as_asgi(): django.urls.path() is typed for HTTP views only.
    """
    return DeclaredConsumer(consumer_class, **initkwargs)
