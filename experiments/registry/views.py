"""HTTP side of the registry: predict/feedback endpoints, the registry and deployment pages (thin views)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from ninja.utils import check_csrf

import experiments.registry.selectors as selectors_serving
import experiments.registry.serving as serving
from experiments.actors import Actor
from experiments.api.tokens import api_token_user
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.registry.services import RegistryError, registry_rollback
from experiments.services import TransitionRefused, experiment_transition

SERVE_PERMISSION = "experiments.view_experiment"
VIEW_PERMISSION = "experiments.view_experiment"
PROMOTE_PERMISSION = "experiments.promote_experiment"
ROLLBACK_PERMISSION = "experiments.rollback_experiment"


def _caller(request: HttpRequest) -> Any:
    """Return the calling user: a bearer token (no CSRF: no cookie rides along) or the session (CSRF)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise serving.ServingError(401, "Authorization: expected 'Bearer <token>'")
        user = api_token_user(raw=raw.strip())
        if user is None:
            raise serving.ServingError(401, "Authorization: invalid or revoked API token")
    else:
        if not request.user.is_authenticated:
            raise serving.ServingError(401, "Log in, or send an API token as 'Authorization: Bearer <token>'")
        if check_csrf(request) is not None:
            raise serving.ServingError(
                403, "CSRF check failed: send the X-CSRFToken header with the csrftoken cookie"
            )
        user = request.user
    if not user.has_perm(SERVE_PERMISSION):
        raise serving.ServingError(403, "You may not use served models.")
    return user


def _serve(request: HttpRequest, handler: Callable[..., dict[str, Any]], model_name: str) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"detail": "POST only"}, status=405, headers={"Allow": "POST"})
    try:
        _caller(request)
        payload = serving.parse_body(request.body)
        return JsonResponse(handler(model_name=model_name, payload=payload))
    except serving.ServingError as exc:
        return JsonResponse({"detail": exc.message}, status=exc.status)


# CSRF is checked in _caller for session callers; token callers carry no ambient credential.
@csrf_exempt
def predict_view(request: HttpRequest, model_name: str) -> JsonResponse:
    """POST {"features": [...]} or {"instances": [[...], ...]} → predictions and the version."""
    return _serve(request, serving.predict, model_name)


@csrf_exempt
def feedback_view(request: HttpRequest, model_name: str) -> JsonResponse:
    """POST {"request_id": ..., "label": n}: the true label of a served prediction."""
    return _serve(request, serving.feedback, model_name)


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def registry_page(request: HttpRequest) -> HttpResponse:
    """Every model with its versions, stages, metrics and served traffic."""
    models: dict[str, list[dict[str, Any]]] = {}
    for version in ModelVersion.objects.select_related("experiment", "parent").order_by(
        "model_name", "-version"
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


@login_required
@require_POST
def rollback_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Restore the previous production version of a model (confirmed in a dialog)."""
    if not request.user.has_perm(ROLLBACK_PERMISSION):
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
        return redirect("registry:model", model_name=model_name)
    return redirect("registry:index")


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def model_page(request: HttpRequest, model_name: str) -> HttpResponse:
    """One model in service: production, the canary rollout, traffic split, live charts, actions."""
    page = selectors_serving.deployment_page(model_name=model_name)
    if page is None:
        raise Http404(f"No model {model_name!r} is registered.")
    return render(
        request,
        "registry/model.html",
        {
            **page,
            "can_promote": request.user.has_perm(PROMOTE_PERMISSION),
            "can_rollback": request.user.has_perm(ROLLBACK_PERMISSION),
        },
    )


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def model_live(request: HttpRequest, model_name: str) -> JsonResponse:
    """What the deployment page redraws every poll: split, rollout state and chart series."""
    versions = selectors_serving.model_versions(model_name=model_name)
    if not selectors_serving.model_exists(model_name=model_name, versions=versions):
        return JsonResponse({"detail": f"No model {model_name!r} is registered."}, status=404)
    payload = selectors_serving.deployment_live(model_name=model_name, versions=versions)
    return JsonResponse(payload, headers={"Cache-Control": "no-store"})


def _posted_id(request: HttpRequest, field: str) -> int | None:
    raw = request.POST.get(field, "").strip()
    return int(raw) if raw.isdigit() else None


@login_required
@require_POST
def promote_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Promote a finished experiment of this model: its canary rollout starts when a policy applies."""
    if not request.user.has_perm(PROMOTE_PERMISSION):
        raise PermissionDenied("You may not promote experiments.")
    experiment_id = _posted_id(request, "experiment_id")
    experiment = Experiment.objects.filter(pk=experiment_id, recipe=model_name).first()
    if experiment is None:
        messages.error(request, f"experiment_id: no experiment of model {model_name!r} with that number.")
        return redirect("registry:model", model_name=model_name)
    try:
        experiment = experiment_transition(
            experiment_id=experiment.pk,
            event="promote",
            actor=Actor.for_user(request.user),
            reason=request.POST.get("reason", "").strip()[:2000]
            or f"promoted from the {model_name} deployment page",
        )
    except TransitionRefused as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, selectors_serving.promotion_summary(experiment=experiment))
    return redirect("registry:model", model_name=model_name)


@login_required
@require_POST
def canary_rollback_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Roll back the live canary (confirmed in a dialog): its experiment is rolled back, production stays."""
    if not request.user.has_perm(ROLLBACK_PERMISSION):
        raise PermissionDenied("You may not roll back deployments.")
    rollout = selectors_serving.live_rollout(model_name=model_name)
    seen = _posted_id(request, "rollout_id")
    # The person confirmed one canary; if it ended (or another replaced it) meanwhile, do nothing.
    if rollout is None or (seen is not None and seen != rollout.pk):
        messages.error(request, f"No canary of {model_name} is under way any more: nothing was rolled back.")
        return redirect("registry:model", model_name=model_name)
    reason = request.POST.get("reason", "").strip()[:2000]
    try:
        experiment_transition(
            experiment_id=rollout.experiment_id,
            event="rollback",
            actor=Actor.for_user(request.user),
            reason=reason or f"canary of {model_name} v{rollout.candidate.version} rolled back by hand",
        )
    except TransitionRefused as exc:
        messages.error(request, exc.message)
    else:
        production = ModelVersion.objects.filter(model_name=model_name, stage=ModelStage.PRODUCTION).first()
        keeps = f"v{production.version} serves every request" if production else "nothing else is serving"
        messages.success(
            request, f"Canary v{rollout.candidate.version} of {model_name} rolled back: {keeps}."
        )
    return redirect("registry:model", model_name=model_name)
