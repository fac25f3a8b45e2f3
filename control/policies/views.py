"""Pages of the control loop: the fleet-wide Triggers page, the trigger rows, and decisions on a trigger."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

import control.policies.triggers as triggers
from control.policies.models import Policy, TriggerStatus
from control.policies.selectors import DECISIONS_BY_STATUS, trigger_list, triggers_visible
from experiments.permissions import requires_permission
from experiments.projects import can

DECIDE_PERMISSION = "control.change_triggerevent"

_DECIDERS = {
    "approve": triggers.trigger_approve,
    "reject": triggers.trigger_reject,
    "execute": triggers.trigger_execute_now,
}


def _rows_context(request: HttpRequest, triggers: Any, *, show_experiment: bool) -> dict[str, Any]:
    rows = list(triggers)
    for trigger in rows:
        trigger.decisions_now = DECISIONS_BY_STATUS.get(trigger.status, ())
    return {
        "triggers": rows,
        "can_decide": request.user.has_perm(DECIDE_PERMISSION),
        "show_experiment": show_experiment,
        "next_url": request.get_full_path(),
    }


@requires_permission("control.view_triggerevent")
@login_required
@permission_required("control.view_triggerevent", raise_exception=True)
@require_GET
def triggers_page(request: HttpRequest) -> HttpResponse:
    """Every trigger of every policy, newest first, live."""
    return _render_triggers(request)


def _render_triggers(request: HttpRequest, *, http_status: int = 200) -> HttpResponse:
    status = request.GET.get("status", "")
    policy = request.GET.get("policy", "")
    if status and status not in TriggerStatus.values:
        status = ""
    context = {
        **_rows_context(
            request, trigger_list(status=status, policy=policy, user=request.user), show_experiment=True
        ),
        "statuses": TriggerStatus.choices,
        "policies": Policy.objects.order_by("name").values_list("name", flat=True),
        "status": status,
        "policy": policy,
        "section": "triggers",
    }
    return render(request, "policies/triggers.html", context, status=http_status)


@requires_permission("control.view_triggerevent")
@login_required
@permission_required("control.view_triggerevent", raise_exception=True)
@require_GET
def trigger_rows_fragment(request: HttpRequest) -> HttpResponse:
    """The trigger rows alone (all, or one experiment's), for live refresh."""
    raw = request.GET.get("experiment", "")
    experiment_id = int(raw) if raw.isdigit() else None
    triggers = trigger_list(
        experiment_id=experiment_id,
        status=request.GET.get("status", ""),
        policy=request.GET.get("policy", ""),
        user=request.user,
    )
    context = _rows_context(request, triggers, show_experiment=experiment_id is None)
    return render(request, "policies/_trigger_rows.html", context)


@requires_permission(DECIDE_PERMISSION)
@requires_permission("control.view_triggerevent", hidden=True)
@login_required
@require_POST
def trigger_decide(request: HttpRequest, trigger_id: int, decision: str) -> HttpResponse:
    """Approve, reject or execute a trigger now; 409 when its status does not allow that."""
    decide = _DECIDERS.get(decision)
    if decide is None:
        raise Http404("unknown decision")
    if not request.user.has_perm(DECIDE_PERMISSION):
        raise PermissionDenied("You may not decide on policy triggers.")
    found = (
        triggers_visible(request.user).filter(pk=trigger_id).select_related("experiment", "policy").first()
    )
    if found is None:
        raise Http404("no such trigger")
    # The role that decides is the one held in the trigger's project (its experiment's, else its policy's).
    in_project = found.experiment if found.experiment is not None else found.policy
    if not can(request.user, DECIDE_PERMISSION, in_project):
        raise PermissionDenied("You may not decide on this project's policy triggers.")
    wants_json = "application/json" in request.headers.get("Accept", "")
    try:
        trigger = decide(trigger_id=trigger_id, user=request.user)
    except triggers.TransitionRefusedForTrigger as exc:
        if wants_json:
            return JsonResponse({"detail": str(exc)}, status=409)
        messages.error(request, str(exc))
        return _render_triggers(request, http_status=409)
    if wants_json:
        return JsonResponse({"trigger_id": trigger.pk, "status": trigger.status})
    messages.success(request, f"Trigger #{trigger.pk} of {trigger.policy.name}: {decision} done.")
    return _back(request)


def _back(request: HttpRequest) -> HttpResponse:
    """Return to the page the decision was made on (an experiment page or the Triggers page)."""
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("triggers:list")
    return HttpResponseRedirect(target)
