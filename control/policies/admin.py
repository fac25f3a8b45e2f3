"""Admin for policies: inlines for conditions, actions and canary stages; dry-run and backtest pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from control.policies.actions import ACTION_KINDS
from control.policies.authoring import policy_backtest_report, policy_dry_run
from control.policies.conditions import CONDITION_KINDS
from control.policies.models import (
    ActionExecution,
    CanaryStage,
    GpuPrice,
    Policy,
    PolicyAction,
    PolicyCondition,
    TriggerEvent,
)
from experiments.admin import ProjectScoped
from experiments.models import Experiment
from experiments.projects import can, visible_projects


def condition_help() -> list[dict[str, str]]:
    """Return each registered condition kind's name, label, help and example, in registry order."""
    # Read from the registry at render time, so a new kind documents itself here.
    return [
        {"name": unit.name, "label": unit.label, "help": unit.help, "example": unit.example_text()}
        for unit in CONDITION_KINDS.values()
    ]


class PolicyConditionInline(admin.TabularInline):  # type: ignore[type-arg]
    model = PolicyCondition
    extra = 0
    fields = ("role", "order", "kind", "metric", "aggregate", "window", "operator", "threshold", "better")
    verbose_name_plural = "Conditions"


class PolicyActionInline(admin.TabularInline):  # type: ignore[type-arg]
    model = PolicyAction
    extra = 0
    fields = ("role", "order", "kind", "params", "enabled")
    formfield_overrides = {models.JSONField: {"widget": forms.Textarea(attrs={"rows": 2, "cols": 50})}}
    verbose_name_plural = "Actions"


class CanaryStageInline(admin.TabularInline):  # type: ignore[type-arg]
    model = CanaryStage
    extra = 0
    fields = ("order", "name", "traffic_pct", "duration_seconds")
    verbose_name_plural = "Canary stages"


class DryRunForm(forms.Form):
    """Pick the experiment to check a policy against."""

    experiment = forms.ModelChoiceField(queryset=Experiment.objects.order_by("-created_at"))


class BacktestForm(forms.Form):
    """Pick the experiments whose history to replay."""

    experiments = forms.ModelMultipleChoiceField(
        queryset=Experiment.objects.filter(points__isnull=False).distinct().order_by("-created_at"),
        required=False,
        help_text="Leave empty to replay the 50 most recent experiments with metrics.",
    )


@admin.register(Policy)
class PolicyAdmin(ProjectScoped, admin.ModelAdmin):  # type: ignore[type-arg]
    project_action = "control.view_policy"
    list_display = ("name", "kind", "project", "mode", "enabled", "order", "scope", "summary", "tools")
    list_filter = ("kind", "mode", "enabled")
    list_editable = ("enabled",)
    search_fields = ("name", "description")
    inlines = [PolicyConditionInline, PolicyActionInline, CanaryStageInline]
    actions = ["enable", "disable"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Save the policy; a new one joins the user's first project where they may add policies."""
        if not change:
            project = visible_projects(request.user, "control.add_policy").order_by("pk").first()
            if project is None:
                raise PermissionDenied("Adding a policy needs the admin role in a project.")
            obj.project = project
        super().save_model(request, obj, form, change)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Return whether the user may change policies; one policy needs the admin role in its project."""
        if obj is None:
            return super().has_change_permission(request)
        return can(request.user, "control.change_policy", obj)

    fieldsets = (
        (None, {"fields": ("name", "kind", "mode", "enabled", "order", "description")}),
        ("Scope", {"fields": ("scope_recipes", "scope_tags")}),
        ("Firing limits", {"fields": ("cooldown_seconds", "max_fires_per_hour", "approval_timeout_seconds")}),
        (
            "Canary rollout and A/B tests (stages below)",
            {"fields": ("canary_min_requests", "canary_alpha", "canary_beta", "canary_margin", "ab_metric")},
        ),
        (
            "Cost-aware scheduling (cost policies)",
            {"fields": ("daily_budget_usd", "max_concurrent_runs", "priority_by"), "classes": ("collapse",)},
        ),
    )

    @admin.display(description="Scope")
    def scope(self, obj: Policy) -> str:
        recipes = ", ".join(obj.scope_recipes) or "all recipes"
        tags = f"; tags {', '.join(obj.scope_tags)}" if obj.scope_tags else ""
        return recipes + tags

    @admin.display(description="What it does")
    def summary(self, obj: Policy) -> str:
        # Generated from the rows, beside the free-text description that may lag behind them.
        return obj.summary()

    @admin.display(description="Check")
    def tools(self, obj: Policy) -> str:
        return format_html(
            '<a href="{}">dry-run</a> · <a href="{}">backtest</a>',
            reverse("admin:control_policy_dryrun", args=[obj.pk]),
            reverse("admin:control_policy_backtest", args=[obj.pk]),
        )

    @admin.action(description="Enable the selected policies")
    def enable(self, request: HttpRequest, queryset: Any) -> None:
        self.message_user(request, f"Enabled {queryset.update(enabled=True)} policies.", messages.SUCCESS)

    @admin.action(description="Disable the selected policies")
    def disable(self, request: HttpRequest, queryset: Any) -> None:
        self.message_user(request, f"Disabled {queryset.update(enabled=False)} policies.", messages.SUCCESS)

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> HttpResponse:
        """Add the help on conditions and actions (shown above the inlines)."""
        context["condition_help"] = condition_help()
        context["action_help"] = [(kind, spec.help) for kind, spec in ACTION_KINDS.items()]
        return super().render_change_form(request, context, *args, **kwargs)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:pk>/dry-run/",
                self.admin_site.admin_view(self.dry_run_view),
                name="control_policy_dryrun",
            ),
            path(
                "<int:pk>/backtest/",
                self.admin_site.admin_view(self.backtest_view),
                name="control_policy_backtest",
            ),
        ]
        return own + super().get_urls()

    def _context(self, request: HttpRequest, policy: Policy, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": policy,
            "policy": policy,
            "title": title,
        }

    def dry_run_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Show each condition's value and pass/fail for one experiment; nothing changes."""
        policy = get_object_or_404(Policy, pk=pk)
        if not self.has_view_permission(request, policy):
            return HttpResponse(status=403)
        form = DryRunForm(request.GET or None)
        result = None
        if form.is_valid():
            result = policy_dry_run(policy=policy, experiment=form.cleaned_data["experiment"])
        context = {
            **self._context(request, policy, f"Dry-run of {policy.name}"),
            "form": form,
            "result": result,
        }
        return TemplateResponse(request, "admin/control/policy/dry_run.html", context)

    def backtest_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Replay the policy over past metric histories and list where it would have fired."""
        policy = get_object_or_404(Policy, pk=pk)
        if not self.has_view_permission(request, policy):
            return HttpResponse(status=403)
        form = BacktestForm(request.GET or None)
        hits = None
        misses = None
        replayed = 0
        if request.GET and form.is_valid():
            chosen = list(form.cleaned_data["experiments"]) or list(form.fields["experiments"].queryset[:50])  # type: ignore[attr-defined]
            replayed = len(chosen)
            hits, misses = policy_backtest_report(policy=policy, experiments=chosen)
        context = {
            **self._context(request, policy, f"Backtest of {policy.name}"),
            "form": form,
            "hits": hits,
            "misses": misses,
            "replayed": replayed,
        }
        return TemplateResponse(request, "admin/control/policy/backtest.html", context)


class ActionExecutionInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ActionExecution
    extra = 0
    can_delete = False
    fields = ("kind", "status", "actor", "attempts", "latency_ms", "error", "result")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TriggerEvent)
class TriggerEventAdmin(ProjectScoped, admin.ModelAdmin):  # type: ignore[type-arg]
    project_field = "policy__project"
    list_display = ("created_at", "policy", "experiment", "kind", "status", "conditions_passed")
    # RelatedOnly: the policies of the rows shown, never another project's policy names.
    list_filter = ("status", ("policy", admin.RelatedOnlyFieldListFilter), "kind")
    readonly_fields = (
        "policy",
        "experiment",
        "kind",
        "conditions_passed",
        "status",
        "created_at",
        "decided_at",
        "decided_by",
        "expires_at",
        "conditions",
    )
    exclude = ("snapshot",)
    inlines = [ActionExecutionInline]

    @admin.display(description="Conditions when it fired")
    def conditions(self, obj: TriggerEvent) -> str:
        rows = obj.snapshot.get("conditions", [])
        return format_html_join(
            "",
            "<div>{} {} — {}</div>",
            (("✔" if c["passed"] else "✘", c["condition"], c["detail"]) for c in rows),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(GpuPrice)
class GpuPriceAdmin(ProjectScoped, admin.ModelAdmin):  # type: ignore[type-arg]
    """GPU prices: the installation's defaults (no project) and each project's own rules."""

    list_display = ("gpu_type", "usd_per_hour", "project")

    def scope_to_projects(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Return the defaults, which price every project, and the rules of the caller's projects."""
        own = super().scope_to_projects(request, queryset)
        return queryset.filter(Q(project__isnull=True) | Q(pk__in=own.values("pk")))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Offer only the projects whose policies the user may change (a price is theirs to set)."""
        if db_field.name == "project":
            kwargs["queryset"] = visible_projects(request.user, "control.change_policy")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
