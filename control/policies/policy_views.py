"""The policy page outside the admin: list, edit and create policies, and preview an edit's dry-run.

The rows are validated by the models' own clean() (the admin runs the same), and every save is
written to the admin's log with the admin's change message, so the admin's history shows it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.admin.utils import construct_change_message
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.forms import BaseForm, BaseFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from control.policies.actions import ACTION_KINDS
from control.policies.admin import condition_help
from control.policies.authoring import policy_dry_run
from control.policies.forms import ActionFormSet, ConditionFormSet, PolicyForm, PreviewForm
from control.policies.models import Policy, PolicyAction, PolicyCondition, policy_summary
from experiments.permissions import requires_permission
from experiments.projects import can, visible, visible_projects

VIEW = "control.view_policy"
CHANGE_PERMISSION = "control.change_policy"
ADD_PERMISSION = "control.add_policy"


@requires_permission(VIEW)
@login_required
@permission_required(VIEW, raise_exception=True)
def policy_list(request: HttpRequest) -> HttpResponse:
    """Every policy with what it does, generated from its rows."""
    # The policies of the caller's projects only (another project's read as missing).
    policies = visible(
        request.user, Policy.objects.prefetch_related("conditions", "actions", "stages"), action=VIEW
    )
    context = {
        "policies": policies,
        "can_change": request.user.has_perm(CHANGE_PERMISSION),
        "can_add": request.user.has_perm(ADD_PERMISSION),
    }
    return render(request, "policies/list.html", context)


def _bound(request: HttpRequest, policy: Policy) -> tuple[PolicyForm, Any, Any]:
    data = request.POST if request.method == "POST" else None
    form = PolicyForm(data, instance=policy)
    conditions = ConditionFormSet(data, instance=policy, prefix="conditions")
    actions = ActionFormSet(data, instance=policy, prefix="actions")
    return form, conditions, actions


def _valid(form: PolicyForm, conditions: Any, actions: Any) -> bool:
    # The policy's form first: its cleaned scope is what the condition rows check metrics against.
    form_ok = form.is_valid()
    conditions_ok = conditions.is_valid()
    actions_ok = actions.is_valid()
    return form_ok and conditions_ok and actions_ok


def _kept_rows(formset: Any) -> list[Any]:
    """Return the row forms that stay (not deleted, not an untouched blank row), in page order."""
    kept = []
    for row in formset.forms:
        data = getattr(row, "cleaned_data", {}) or {}
        if data.get("DELETE"):
            continue
        if row.instance.pk is None and not row.has_changed():
            continue
        kept.append(row)
    return kept


def _save(request: HttpRequest, form: PolicyForm, conditions: Any, actions: Any, *, add: bool) -> Policy:
    with transaction.atomic():
        policy = form.save()
        for formset in (conditions, actions):
            formset.instance = policy
            formset.save(commit=False)
            for obj in formset.deleted_objects:
                obj.delete()
            # A row's place on the page is its order.
            for order, row in enumerate(_kept_rows(formset)):
                row.instance.policy = policy
                row.instance.order = order
                row.instance.save()
        # The admin's own change message ("Changed threshold for policy condition ..."), so the
        # admin's history reads the same whichever page the edit came from.
        message: list[Any] = construct_change_message(form, [conditions, actions], add)  # type: ignore[arg-type]
        user_id: int = request.user.pk  # type: ignore[assignment]  # the decorators let only a logged-in user here
        LogEntry.objects.log_actions(
            user_id, [policy], ADDITION if add else CHANGE, message, single_object=True
        )
    return policy


def _edit_page(request: HttpRequest, policy: Policy, *, add: bool) -> HttpResponse:
    form, conditions, actions = _bound(request, policy)
    if request.method == "POST":
        if _valid(form, conditions, actions):
            saved = _save(request, form, conditions, actions, add=add)
            messages.success(request, f"Policy {saved.name} {'created' if add else 'saved'}.")
            return HttpResponseRedirect(reverse("policies:edit", args=[saved.pk]))
        messages.error(request, "Nothing was saved: correct the fields marked below.")
    context = {
        "form": form,
        "conditions": conditions,
        "actions": actions,
        "policy": policy,
        "add": add,
        "summary": policy.summary() if policy.pk else "",
        "preview_form": PreviewForm(user=request.user),
        "condition_help": condition_help(),
        "action_help": [(kind, spec.help) for kind, spec in ACTION_KINDS.items()],
    }
    status = 422 if request.method == "POST" else 200
    return render(request, "policies/edit.html", context, status=status)


@requires_permission(CHANGE_PERMISSION)
@requires_permission(VIEW, hidden=True)
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def policy_edit(request: HttpRequest, policy_id: int) -> HttpResponse:
    """Edit a policy, its conditions and its actions in one form; nothing is saved on an error.

    Another project's policy answers as a missing one; editing needs the admin role in its project.
    """
    policy = get_object_or_404(visible(request.user, Policy.objects.all(), action=VIEW), pk=policy_id)
    if not can(request.user, CHANGE_PERMISSION, policy):
        raise PermissionDenied("Editing a policy needs the admin role in its project.")
    return _edit_page(request, policy, add=False)


@requires_permission(ADD_PERMISSION)
@login_required
@permission_required(ADD_PERMISSION, raise_exception=True)
def policy_new(request: HttpRequest) -> HttpResponse:
    """Create a policy with its rows in the caller's first project where they may add one."""
    project = visible_projects(request.user, ADD_PERMISSION).order_by("pk").first()
    if project is None:
        raise PermissionDenied("Adding a policy needs the admin role in a project.")
    return _edit_page(request, Policy(project=project), add=True)


def _errors(
    prefix: list[Any],
    form: BaseForm | BaseFormSet,  # type: ignore[type-arg]
    fields: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Return a form's or formset's errors as the API's field-level detail (loc, msg)."""
    detail: list[dict[str, Any]] = []
    if isinstance(form, BaseFormSet):
        for index, row in enumerate(form.forms):
            detail += _errors([*prefix, index], row)
        detail += [{"loc": prefix, "msg": str(m)} for m in form.non_form_errors()]
        return detail
    for field, errors in form.errors.get_json_data().items():
        if fields is not None and field not in fields:
            continue
        loc = [*prefix, field] if field != "__all__" else prefix
        detail += [{"loc": loc, "msg": e["message"]} for e in errors]
    return detail


@requires_permission(VIEW)
@requires_permission("experiments.view_experiment")
@login_required
@require_POST
def policy_preview(request: HttpRequest) -> HttpResponse:
    """The dry-run verdict of the policy as it stands in the form, not saved, on one experiment.

    Takes the edit form's fields plus `experiment` (and `policy`, the id being edited, if any).
    Bad input answers 422 with field-level errors; nothing is written either way.
    """
    raw_id = request.POST.get("policy", "")
    policy = Policy()
    if raw_id:
        policies = visible(request.user, Policy.objects.all(), action=VIEW)
        found = policies.filter(pk=int(raw_id)).first() if raw_id.isdigit() else None
        if found is None:
            return JsonResponse(
                {"detail": [{"loc": ["body", "policy"], "msg": "no such policy"}]}, status=422
            )
        policy = found
    form, conditions, actions = _bound(request, policy)
    chooser = PreviewForm(request.POST, user=request.user)
    _valid(form, conditions, actions)
    chooser.is_valid()
    # Only what the verdict depends on may block a preview (a name can wait for the save).
    detail = (
        _errors(["body"], chooser)
        + _errors(["body"], form, {"kind", "scope_recipes"})
        + _errors(["body", "conditions"], conditions)
        + _errors(["body", "actions"], actions)
    )
    if detail:
        return JsonResponse({"detail": detail}, status=422)
    condition_rows: list[PolicyCondition] = [row.instance for row in _kept_rows(conditions)]
    action_rows: list[PolicyAction] = [row.instance for row in _kept_rows(actions)]
    with transaction.atomic():
        result = policy_dry_run(
            policy=form.instance,
            experiment=chooser.cleaned_data["experiment"],
            conditions=condition_rows,
            actions=action_rows,
        )
        # A preview never writes: whatever the evaluation might have touched is undone.
        transaction.set_rollback(True)
    for row in result["conditions"]:
        row["near_miss"] = not row["passed"] and row.get("short_by") is not None
    return JsonResponse(
        {**result, "summary": policy_summary(condition_rows, action_rows, form.instance.settings_summary())}
    )
