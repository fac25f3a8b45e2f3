"""Admin of A/B tests: a form that starts one (through ab_test_start), and each test's decisions, read only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

import control.canary.selectors as selectors
from control.canary.ab import ABTestError, ab_test_cancel, ab_test_start
from control.canary.models import ABTest
from control.policies.models import Policy, PolicyKind
from experiments.actors import Actor
from experiments.admin import ProjectScoped
from experiments.models import ModelVersion
from experiments.projects import VIEW, project_ids_where


def _version_label(version: ModelVersion) -> str:
    accuracy = (version.metrics or {}).get("accuracy")
    measured = f" · accuracy {accuracy:.4f}" if isinstance(accuracy, int | float) else ""
    return f"v{version.version} ({version.get_stage_display().lower()}){measured}"


AB_TEST_START_PERMISSION = "control.add_abtest"


def _project_ids_where_any(user: Any, *actions: str) -> set[int] | None:
    """Return the projects where the user may do any of the actions (None: every project)."""
    found: set[int] = set()
    for action in actions:
        ids = project_ids_where(user, action)
        if ids is None:
            return None
        found |= ids
    return found


def _startable(user: Any, queryset: QuerySet[Any], action: str) -> QuerySet[Any]:
    """Return the rows of projects where the user may `action` or start A/B tests (as the default project grants)."""
    ids = _project_ids_where_any(user, action, AB_TEST_START_PERMISSION)
    return queryset if ids is None else queryset.filter(project_id__in=ids)


class ABTestStartForm(forms.Form):
    """What an A/B test needs: the model, two or more of its versions, and the A/B policy that judges them."""

    model_name = forms.ChoiceField(label="Model")
    version_ids = forms.TypedMultipleChoiceField(
        label="Versions (arms)",
        coerce=int,
        widget=forms.CheckboxSelectMultiple,
        help_text="Two or more versions of the model. Each takes an equal share of its requests; "
        "production, when it is not an arm, serves none of them until the test ends.",
    )
    policy = forms.ModelChoiceField(
        queryset=Policy.objects.none(),
        help_text="An A/B test policy: its metric, minimum requests, error rate (alpha) and margin decide.",
    )

    def __init__(self, *args: Any, user: Any, model_name: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the user's projects' models and policies: another project's are neither offered nor accepted.
        versions = _startable(user, ModelVersion.objects.order_by("model_name", "-version"), VIEW)
        names = sorted(set(versions.values_list("model_name", flat=True)))
        self.fields["model_name"].choices = [(n, n) for n in names]  # type: ignore[attr-defined]
        # The page offers one model's versions and A/B policies only; a submitted choice outside
        # them goes on to ab_test_start, whose refusal names the field and says what is wrong.
        policies = _startable(user, Policy.objects.order_by("name"), "control.view_policy")
        if not self.is_bound:
            policies = policies.filter(kind=PolicyKind.AB_TEST)
            if model_name in names:
                versions = versions.filter(model_name=model_name)
                self.initial.setdefault("model_name", model_name)
        grouped: dict[str, list[tuple[int, str]]] = {}
        for v in versions:
            grouped.setdefault(v.model_name, []).append((v.pk, _version_label(v)))
        self.fields["version_ids"].choices = list(grouped.items())  # type: ignore[attr-defined]
        self.fields["policy"].queryset = policies  # type: ignore[attr-defined]
        # The mode says whether the winner is promoted (auto) or only recorded.
        self.fields["policy"].label_from_instance = _policy_label  # type: ignore[attr-defined]


class ABTestCancelForm(forms.Form):
    """Why the selected tests are cancelled: the reason goes into each test's outcome."""

    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": "Say why the test is cancelled: it is kept in the test's outcome."},
        help_text="Kept in each test's outcome, with your name.",
    )


def _policy_label(policy: Policy) -> str:
    return f"{policy.name} (mode {policy.mode}; compares {policy.ab_metric or 'accuracy'})"


@admin.register(ABTest)
class ABTestAdmin(ProjectScoped, admin.ModelAdmin):  # type: ignore[type-arg]
    """A/B tests: started here by a person with control.add_abtest; their decisions are the sweep's."""

    # A test belongs to its model's project (its policy is optional): the column shows the policy's.
    project_field = "policy__project"

    list_display = (
        "id",
        "model_name",
        "arm_versions",
        "metric",
        "status",
        "started_by",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "model_name")
    search_fields = ("model_name", "started_by", "outcome")
    list_select_related = ("policy",)
    readonly_fields = (
        "model_name", "policy", "arm_versions", "metric", "status", "winner", "outcome", "decisions",
        "dropped", "after_request", "trigger", "started_by", "started_at", "finished_at",
    )  # fmt: skip
    fields = readonly_fields
    actions = ["cancel_selected"]

    def scope_to_projects(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Return the tests of models in projects where the user sees experiments or A/B tests.

        A model is its versions' project's; the default project also honours the global view_abtest.
        """
        ids = _project_ids_where_any(request.user, VIEW, "control.view_abtest")
        if ids is None:
            return queryset
        models = ModelVersion.objects.filter(project_id__in=ids).values("model_name")
        return queryset.filter(model_name__in=models)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """No field is edited (the test moves by the sweep's decisions); the change permission cancels."""
        return obj is None and super().has_change_permission(request)

    @admin.action(
        permissions=["change"], description="Cancel the selected A/B tests (traffic back to production)…"
    )
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[ABTest]) -> HttpResponse | None:
        """Ask for a reason, then cancel each open test through ab_test_cancel; one not open is an error message."""
        open_tests = []
        for test in queryset.order_by("pk"):
            if test.is_open:
                open_tests.append(test)
            else:
                self.message_user(
                    request,
                    f"A/B test #{test.pk} is {test.get_status_display().lower()}: only a running test can "
                    "be cancelled; it was left as it is.",
                    messages.ERROR,
                )
        if not open_tests:
            return None
        form = ABTestCancelForm(request.POST if "confirm" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Cancel A/B tests",
                "form": form,
                "tests": [(t, self.arm_versions(t)) for t in open_tests],
                "action": "cancel_selected",
                "selected": [str(t.pk) for t in open_tests],
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/control/abtest/cancel.html", context)
        actor = Actor.for_user(request.user)
        for test in open_tests:
            try:
                ab_test_cancel(test=test, actor=actor, reason=form.cleaned_data["reason"])
            except ABTestError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            self.log_change(request, test, f"Cancelled: {form.cleaned_data['reason']}")
            self.message_user(
                request,
                f"A/B test #{test.pk} of {test.model_name} cancelled: production serves alone, the arms are "
                "back in the stages they had before it.",
                messages.SUCCESS,
            )
        return None

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """A test is a record of decisions taken on served traffic."""
        return False

    @admin.display(description="Arms")
    def arm_versions(self, obj: ABTest) -> str:
        labels = dict(ModelVersion.objects.filter(pk__in=obj.arms).values_list("pk", "version"))
        return ", ".join(f"v{labels[pk]}" if pk in labels else f"#{pk}" for pk in obj.arms)

    @admin.display(description="Effects (a - b on the metric, confidence interval, pairs)")
    def decisions(self, obj: ABTest) -> str:
        state = selectors.ab_test_state(obj)
        arms = format_html_join(
            "",
            "<li>v{}: {}% of requests, {} served, {} judged</li>",
            ((a["version"], a["share_pct"], a["requests"], a["judged"]) for a in state["arms"]),
        )
        pairs = format_html_join(
            "",
            "<li>{} - {}: {} in [{}, {}] over {} pairs ({})</li>",
            (
                (p["a"], p["b"], f"{p['effect']:+.4f}", f"{p['low']:+.4f}", f"{p['high']:+.4f}", p["pairs"],
                 p["decision"].replace("_", " "))
                for p in state["pairs"]
            ),
        )  # fmt: skip
        return format_html('<ul class="ab-arms">{}</ul><ul class="ab-pairs">{}</ul>', arms, pairs or "—")

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Start an A/B test through ab_test_start as the admin user; each refusal is its field's error."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ABTestStartForm(
            request.POST or None, user=request.user, model_name=request.GET.get("model_name", "")
        )
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                test = ab_test_start(
                    model_name=data["model_name"],
                    version_ids=data["version_ids"],
                    policy=data["policy"],
                    actor=Actor.for_user(request.user),
                )
            except ABTestError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                self.log_addition(request, test, [{"added": {}}])
                arms = self.arm_versions(test)
                self.message_user(
                    request,
                    f"A/B test #{test.pk} of {test.model_name} started: {arms} share its requests equally, "
                    f"judged on {test.metric} by policy {data['policy'].name}.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:control_abtest_change", args=[test.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start an A/B test",
            "form": form,
            "has_ab_policy": _startable(
                request.user, Policy.objects.filter(kind=PolicyKind.AB_TEST), "control.view_policy"
            ).exists(),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/control/abtest/start.html", context)
