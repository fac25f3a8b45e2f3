"""HTTP side of the registry: predict/feedback endpoints, the registry page, production rollback (thin views).

A model's deployment page (canary rollouts) belongs to the control layer: control/canary/views.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from ninja.utils import check_csrf

import experiments.registry.serving as serving
from experiments.actors import Actor
from experiments.api.bodies import MAX_JSON_BODY_BYTES, json_body_refusal
from experiments.api.tokens import TokenLockedOut, api_token_authenticate
from experiments.permissions import requires_permission
from experiments.projects import can, may_see_model, model_project_id, visible_model_versions
from experiments.registry.services import RegistryError, registry_rollback
from experiments.services import TransitionRefused

SERVE_PERMISSION = "experiments.view_experiment"
# Labels steer canary judging and curated retraining sets: sending them is its own permission,
# and only a sender with the trusted one has labels that count.
FEEDBACK_PERMISSION = "experiments.give_feedback"
TRUSTED_FEEDBACK_PERMISSION = "experiments.give_trusted_feedback"
VIEW_PERMISSION = "experiments.view_experiment"
PROMOTE_PERMISSION = "experiments.promote_experiment"
ROLLBACK_PERMISSION = "experiments.rollback_experiment"


def _caller(request: HttpRequest) -> tuple[Any, str]:
    """Return the calling user and how it came: a bearer token (no CSRF: no cookie rides along) or the session (CSRF)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise serving.ServingError(401, "Authorization: expected 'Bearer <token>'")
        try:
            user = api_token_authenticate(request=request, raw=raw.strip())
        except TokenLockedOut:
            # AxesMiddleware turns this into the lockout answer (429, Retry-After).
            raise serving.ServingError(
                429, "Too many failed logins from this address: try again later"
            ) from None
        if user is None:
            raise serving.ServingError(401, "Authorization: invalid or revoked API token")
        via = "token"
    else:
        if not request.user.is_authenticated:
            raise serving.ServingError(401, "Log in, or send an API token as 'Authorization: Bearer <token>'")
        if check_csrf(request) is not None:
            raise serving.ServingError(
                403, "CSRF check failed: send the X-CSRFToken header with the csrftoken cookie"
            )
        user = request.user
        via = "session"
    if not user.has_perm(SERVE_PERMISSION):
        raise serving.ServingError(403, "You may not use served models.")
    return user, via


def _payload(request: HttpRequest) -> dict[str, Any]:
    """Return the request's JSON object: JSON only (415), bounded in size (413), well-formed (400)."""
    refusal = json_body_refusal(request)
    if refusal is not None:
        raise serving.ServingError(*refusal)
    try:
        body = request.body
    except RequestDataTooBig:
        # A body sent without Content-Length: Django stops reading it at its own bound.
        raise serving.ServingError(413, f"body: at most {MAX_JSON_BODY_BYTES} bytes") from None
    return serving.parse_body(body)


def _serve(
    request: HttpRequest,
    model_name: str,
    answer: Callable[[Any, str, dict[str, Any]], dict[str, Any]],
    *,
    also_needs: tuple[str, str] | None = None,
) -> JsonResponse:
    """Authenticate, check the model's project and also_needs (permission, refusal), read the body, answer."""
    if request.method != "POST":
        return JsonResponse({"detail": "POST only"}, status=405, headers={"Allow": "POST"})
    try:
        user, via = _caller(request)
        # A model of another project answers exactly as an unknown one.
        if not may_see_model(user, model_name):
            raise serving.ServingError(404, f"Unknown model {model_name!r}.")
        if also_needs is not None and not can(user, also_needs[0], model_project_id(model_name) or 0):
            raise serving.ServingError(403, also_needs[1])
        return JsonResponse(answer(user, via, _payload(request)))
    except serving.ServingError as exc:
        return JsonResponse({"detail": exc.message}, status=exc.status)


# CSRF is checked in _caller for session callers; token callers carry no ambient credential.
@requires_permission(SERVE_PERMISSION, api=True)
@csrf_exempt
def predict_view(request: HttpRequest, model_name: str) -> JsonResponse:
    """POST {"features": [...]} or {"instances": [[...], ...]} → predictions and the version."""
    return _serve(
        request,
        model_name,
        lambda user, via, payload: serving.predict(model_name=model_name, payload=payload),
    )


@requires_permission(SERVE_PERMISSION, FEEDBACK_PERMISSION, api=True)
@csrf_exempt
def feedback_view(request: HttpRequest, model_name: str) -> JsonResponse:
    """POST {"request_id": ..., "label": n}: the true label of a served prediction (its own permission)."""

    def answer(user: Any, via: str, payload: dict[str, Any]) -> dict[str, Any]:
        source = serving.FeedbackSource(
            f"{via}:{user.get_username()}",
            trusted=can(user, TRUSTED_FEEDBACK_PERMISSION, model_project_id(model_name) or 0),
        )
        return serving.feedback(model_name=model_name, payload=payload, source=source)

    return _serve(
        request, model_name, answer, also_needs=(FEEDBACK_PERMISSION, "You may not send feedback labels.")
    )


@requires_permission(VIEW_PERMISSION)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def registry_page(request: HttpRequest) -> HttpResponse:
    """Every model with its versions, stages, metrics and served traffic."""
    models: dict[str, list[dict[str, Any]]] = {}
    for version in (
        visible_model_versions(request.user)
        .select_related("experiment", "parent")
        .prefetch_related("evaluations")
        .order_by("model_name", "-version")
    ):
        models.setdefault(version.model_name, []).append(
            {"v": version, "stats": serving.version_summary(version)}
        )
    groups = [
        {
            "name": name,
            "versions": rows,
            "production": next((r["v"] for r in rows if r["v"].stage == "production"), None),
        }
        for name, rows in models.items()
    ]
    return render(
        request,
        "registry/index.html",
        {"groups": groups, "can_rollback": request.user.has_perm(ROLLBACK_PERMISSION)},
    )


@requires_permission(ROLLBACK_PERMISSION)
@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@require_POST
def rollback_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Restore the previous production version of a model (confirmed in a dialog)."""
    if not may_see_model(request.user, model_name):
        raise Http404("No such model.")
    if not can(request.user, ROLLBACK_PERMISSION, model_project_id(model_name) or 0):
        raise PermissionDenied("You may not roll back deployments.")
    try:
        restored = registry_rollback(
            model_name=model_name,
            actor=Actor.for_user(request.user),
            reason=request.POST.get("reason", "").strip(),
        )
    except (RegistryError, TransitionRefused) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{model_name} rolled back: v{restored.version} serves again.")
    return _back(request, model_name)


def _back(request: HttpRequest, model_name: str) -> HttpResponse:
    """Redirect to the page the form was on: the model's deployment page or the registry."""
    if request.POST.get("return_to") == "model":
        return redirect("deployments:model", model_name=model_name)
    return redirect("registry:index")
