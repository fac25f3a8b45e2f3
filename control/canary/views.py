"""The deployment page of one model: traffic split, canary rollout, live charts, Promote and Roll back canary."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

import control.canary.selectors as selectors
from control.canary.ab import AB_TEST_CANCEL_PERMISSION, ABTestError, ab_test_cancel
from control.canary.models import ABTest
from experiments.actors import Actor
from experiments.models import ModelStage, ModelVersion
from experiments.permissions import requires_permission
from experiments.projects import can, model_hidden, model_project_id, visible_experiments
from experiments.registry.views import PROMOTE_PERMISSION, ROLLBACK_PERMISSION, VIEW_PERMISSION
from experiments.services import TransitionRefused, experiment_transition

AB_TEST_ADD_PERMISSION = "control.add_abtest"


@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def model_page(request: HttpRequest, model_name: str) -> HttpResponse:
    """One model in service: production, the canary rollout, traffic split, live charts, actions."""
    page = (
        None if model_hidden(request.user, model_name) else selectors.deployment_page(model_name=model_name)
    )
    if page is None:
        raise Http404(f"No model {model_name!r} is registered.")
    # Only the user's own experiments are offered for promotion.
    page["candidates"] = [
        c for c in page["candidates"] if can(request.user, VIEW_PERMISSION, c["experiment"])
    ]
    return render(
        request,
        "registry/model.html",
        {
            **page,
            "can_promote": can(request.user, PROMOTE_PERMISSION, model_project_id(model_name) or 0),
            "can_rollback": can(request.user, ROLLBACK_PERMISSION, model_project_id(model_name) or 0),
            # A/B tests are started in the admin, so the link is for staff who may add one.
            "can_start_ab_test": request.user.is_staff and request.user.has_perm(AB_TEST_ADD_PERMISSION),
            "can_cancel_ab_test": request.user.has_perm(AB_TEST_CANCEL_PERMISSION),
        },
    )


@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def model_live(request: HttpRequest, model_name: str) -> JsonResponse:
    """What the deployment page redraws every poll: split, rollout state and chart series."""
    versions = selectors.model_versions(model_name=model_name)
    if model_hidden(request.user, model_name) or not selectors.model_exists(
        model_name=model_name, versions=versions
    ):
        return JsonResponse({"detail": f"No model {model_name!r} is registered."}, status=404)
    payload = selectors.deployment_live(model_name=model_name, versions=versions)
    return JsonResponse(payload, headers={"Cache-Control": "no-store"})


def _model_or_404(request: HttpRequest, model_name: str) -> None:
    """Raise 404 for a model outside the user's projects, exactly as for an unregistered one."""
    if model_hidden(request.user, model_name):
        raise Http404(f"No model {model_name!r} is registered.")


def _posted_id(request: HttpRequest, field: str) -> int | None:
    raw = request.POST.get(field, "").strip()
    return int(raw) if raw.isdigit() else None


@requires_permission(PROMOTE_PERMISSION)
@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@require_POST
def promote_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Promote a finished experiment of this model: its canary rollout starts when a policy applies."""
    # A registered model of another project answers as an unknown one; a first version has no model yet.
    _model_or_404(request, model_name)
    if not request.user.has_perm(PROMOTE_PERMISSION):
        raise PermissionDenied("You may not promote experiments.")
    experiment_id = _posted_id(request, "experiment_id")
    experiment = (
        visible_experiments(request.user).filter(pk=experiment_id, recipe=model_name).first()
        if experiment_id is not None
        else None
    )
    if experiment is None:
        messages.error(request, f"experiment_id: no experiment of model {model_name!r} with that number.")
        return redirect("deployments:model", model_name=model_name)
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
        messages.success(request, selectors.promotion_summary(experiment=experiment))
    return redirect("deployments:model", model_name=model_name)


@requires_permission(ROLLBACK_PERMISSION)
@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@require_POST
def canary_rollback_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Roll back the live canary (confirmed in a dialog): its experiment is rolled back, production stays."""
    _model_or_404(request, model_name)
    if not can(request.user, ROLLBACK_PERMISSION, model_project_id(model_name) or 0):
        raise PermissionDenied("You may not roll back deployments.")
    rollout = selectors.live_rollout(model_name=model_name)
    seen = _posted_id(request, "rollout_id")
    # The person confirmed one canary; if it ended (or another replaced it) meanwhile, do nothing.
    if rollout is None or (seen is not None and seen != rollout.pk):
        messages.error(request, f"No canary of {model_name} is under way any more: nothing was rolled back.")
        return redirect("deployments:model", model_name=model_name)
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
    return redirect("deployments:model", model_name=model_name)


@requires_permission(AB_TEST_CANCEL_PERMISSION)
@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@require_POST
def ab_test_cancel_view(request: HttpRequest, model_name: str) -> HttpResponse:
    """Cancel the model's open A/B test (confirmed in a dialog, with a reason): production serves alone."""
    _model_or_404(request, model_name)
    if not request.user.has_perm(AB_TEST_CANCEL_PERMISSION):
        raise PermissionDenied("You may not cancel A/B tests.")
    test_id = _posted_id(request, "ab_test_id")
    test = ABTest.objects.filter(pk=test_id, model_name=model_name).first() if test_id is not None else None
    reason = request.POST.get("reason", "").strip()[:2000]
    if test is None:
        messages.error(request, f"ab_test_id: no A/B test of {model_name} with that number.")
    elif not reason:
        messages.error(request, "reason: say why the test is cancelled; nothing was cancelled.")
    else:
        try:
            ab_test_cancel(test=test, actor=Actor.for_user(request.user), reason=reason)
        except ABTestError as exc:
            messages.error(request, f"{exc.message}; nothing was cancelled.")
        else:
            messages.success(
                request,
                f"A/B test #{test.pk} of {model_name} cancelled: production serves every request, the arms "
                "are back in the stages they had before it.",
            )
    return redirect("deployments:model", model_name=model_name)
