"""Admin for experiments: transition buttons that go through the audited service; read-only logs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django_fsm import Transition
from django_fsm.admin import FSMAdminMixin

from experiments.actors import Actor
from experiments.models import (
    EVENT_LABELS,
    ApiToken,
    DatasetVersion,
    Dependency,
    DriftCheck,
    Experiment,
    Membership,
    MetricPoint,
    ModelVersion,
    Project,
    Run,
    RunArtifact,
    RunEvaluation,
    RunStage,
    TransitionLog,
)
from experiments.pipelines.services import dependency_add, dependency_remove
from experiments.projects import (
    VIEW,
    visible,
    visible_experiments,
    visible_model_versions,
    visible_projects,
)
from experiments.services import TransitionRefused, experiment_transition

# Events a person fires from the admin; start/complete/fail/requeue belong to the
# scheduler and workers, retrain creates a child and lives on the experiment page.
ADMIN_EVENTS = frozenset({"queue", "cancel", "promote", "hold", "deploy", "rollback", "retry"})


class ProjectChoices:
    """Admin forms whose project, experiment and model-version choices are the caller's projects' only.

    A select never names another project's object, and a typed id of one (a raw-id field) is
    refused as an invalid choice.
    """

    # The permission a staff member's role must grant in a project to choose it.
    project_choice_action = VIEW

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if "queryset" not in kwargs:
            related = db_field.related_model
            if related is Project:
                kwargs["queryset"] = visible_projects(request.user, self.project_choice_action)
            elif related is Experiment:
                kwargs["queryset"] = visible_experiments(request.user)
            elif related is ModelVersion:
                kwargs["queryset"] = visible_model_versions(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


class ProjectScoped(ProjectChoices):
    """Admin of project-owned rows: staff see their projects' rows only (superusers all).

    The rows reach their project through `project_field` (e.g. "run__experiment__project"). The
    list, search, filters and change pages all start from get_queryset, so a row of another project
    is absent from the list and its change page answers as a missing object. The project column and
    its filter are added here, once for every such admin.
    """

    project_field = "project"
    # The permission a staff member's role must grant in the row's project to see it.
    project_action = VIEW

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        return self.scope_to_projects(request, queryset)

    def scope_to_projects(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Return the rows of queryset in projects where the user may `project_action`."""
        return visible(request.user, queryset, field=self.project_field, action=self.project_action)

    def get_list_display(self, request: HttpRequest) -> Any:
        shown = tuple(super().get_list_display(request))  # type: ignore[misc]
        return shown if self.project_field in shown else (*shown, self.project_field)

    def get_list_filter(self, request: HttpRequest) -> Any:
        # RelatedOnly lists the projects of the rows shown: staff never read another project's name.
        filters = tuple(super().get_list_filter(request))  # type: ignore[misc]
        named = {f[0] if isinstance(f, tuple) else f for f in filters}
        if self.project_field in named:
            return filters
        return ((self.project_field, admin.RelatedOnlyFieldListFilter), *filters)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Viewable, never written through the admin: records of what happened."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TransitionLogInline(admin.TabularInline):  # type: ignore[type-arg]
    """The experiment's history, shown under its change form."""

    model = TransitionLog
    fields = ("created_at", "event", "source_state", "target_state", "actor", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("created_at", "id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DependencyInline(ProjectChoices, admin.TabularInline):  # type: ignore[type-arg]
    """What the experiment waits for: one row per upstream (a cycle is refused on the upstream field)."""

    model = Dependency
    fk_name = "downstream"
    fields = ("upstream", "after", "on_upstream_failure")
    raw_id_fields = ("upstream",)
    extra = 0
    verbose_name = "dependency (waits for)"
    verbose_name_plural = "dependencies (waits for)"


@admin.register(Experiment)
class ExperimentAdmin(ProjectScoped, FSMAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Experiments with their transition buttons; every button fires the audited service."""

    fsm_fields = ["state"]
    list_display = (
        "id",
        "name",
        "recipe",
        "executor",
        "state",
        "priority_class",
        "priority",
        "owner",
        "project",
        "created_at",
    )
    list_display_links = ("id", "name")
    list_filter = ("state", "recipe", "executor", "priority_class")
    search_fields = ("name", "description", "tags")
    list_select_related = ("owner", "project")
    raw_id_fields = ("owner", "parent")
    readonly_fields = ("state_changed_at", "queued_at", "created_at", "updated_at")
    inlines = [DependencyInline, TransitionLogInline]
    fieldsets = (
        (
            None,
            {"fields": ("name", "description", "project", "state", "recipe", "executor", "config", "tags")},
        ),
        (
            "Scheduling and resources",
            {
                "fields": (
                    "priority_class",
                    "priority",
                    "gpus",
                    "gpu_type",
                    "memory_gb",
                    "cpu_cores",
                    "host_memory_gb",
                    "max_attempts",
                    "timeout_seconds",
                    "not_before",
                )
            },
        ),
        ("Ownership and lineage", {"fields": ("owner", "parent")}),
        ("Times", {"fields": ("state_changed_at", "queued_at", "created_at", "updated_at")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Fix the executor once the experiment exists: its runs were started by one or the other."""
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, "executor") if obj is not None else fields

    def get_fsm_block_label(self, fsm_field_name: str) -> str:  # type: ignore[override]
        return "Actions (recorded in the history)"

    def is_fsm_transition_visible(self, transition: Transition) -> bool:
        return transition.name in ADMIN_EVENTS

    def get_fsm_label(self, transition: Transition) -> str:
        return EVENT_LABELS.get(transition.name, transition.name)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change and obj.owner_id is None:
            obj.owner = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """Add and remove dependency edges through the pipeline's services (input wiring, release)."""
        if formset.model is not Dependency:
            super().save_formset(request, form, formset, change)
            return
        edges = formset.save(commit=False)
        for edge in formset.deleted_objects:
            dependency_remove(edge_id=edge.pk)
        for edge in edges:
            if edge.pk is None:
                dependency_add(
                    downstream=form.instance,
                    upstream=edge.upstream,
                    after=edge.after,
                    on_upstream_failure=edge.on_upstream_failure,
                )
            else:
                edge.full_clean()
                edge.save()

    def _apply_fsm_transition(
        self,
        *,
        obj: Experiment,  # type: ignore[override]
        transition_name: str,
        request: HttpRequest,
        kwargs: Any = None,
    ) -> bool:
        """Fire the transition through experiment_transition (permission, audit row, side effects)."""
        try:
            experiment = experiment_transition(
                experiment_id=obj.pk,
                event=transition_name,
                actor=Actor.for_user(request.user),
                reason="via admin",
            )
        except (TransitionRefused, PermissionDenied) as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return False
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), level=messages.ERROR)
            return False
        self.message_user(
            request,
            f"{EVENT_LABELS.get(transition_name, transition_name)}: “{experiment.name}” is now "
            f"{experiment.get_state_display().lower()}.",
            level=messages.SUCCESS,
        )
        return True


@admin.register(TransitionLog)
class TransitionLogAdmin(ProjectScoped, ReadOnlyAdmin):
    """The audit log: who fired which event, from where to where, and why."""

    project_field = "experiment__project"

    list_display = ("created_at", "experiment", "event", "source_state", "target_state", "actor", "reason")
    list_filter = ("event", "target_state")
    search_fields = ("experiment__name", "actor", "reason")
    list_select_related = ("experiment",)
    date_hierarchy = "created_at"


@admin.register(Run)
class RunAdmin(ProjectScoped, ReadOnlyAdmin):
    """Training attempts, as the workers recorded them."""

    project_field = "experiment__project"

    list_display = (
        "id",
        "experiment",
        "attempt",
        "status",
        "worker",
        "device",
        "progress",
        "started_at",
        "finished_at",
    )
    list_filter = ("status",)
    search_fields = ("experiment__name", "worker", "task_id")
    list_select_related = ("experiment__project",)


@admin.register(RunStage)
class RunStageAdmin(ProjectScoped, ReadOnlyAdmin):
    """The stages a run completed (pre-train, train, evaluate…), each with its wall-clock time."""

    project_field = "run__experiment__project"

    list_display = ("run__experiment", "run", "name", "seconds", "completed_at")
    list_filter = ("name",)
    search_fields = ("run__experiment__name", "name")
    list_select_related = ("run__experiment",)


@admin.register(RunArtifact)
class RunArtifactAdmin(ProjectScoped, ReadOnlyAdmin):
    """Files a run saved (checkpoints, reports), with size and checksum; retention marks removed ones."""

    project_field = "run__experiment__project"

    list_display = ("run__experiment", "run", "name", "kind", "size", "sha256", "created_at", "deleted_at")
    list_filter = ("kind",)
    search_fields = ("run__experiment__name", "name", "sha256")
    list_select_related = ("run__experiment",)


@admin.register(RunEvaluation)
class RunEvaluationAdmin(ProjectScoped, ReadOnlyAdmin):
    """Evaluation jobs: the checkpoint judged, on which held-out set, where, and what it measured."""

    project_field = "experiment__project"

    list_display = (
        "experiment", "run", "status", "eval_set", "worker", "device", "started_at", "finished_at", "note"
    )  # fmt: skip
    list_filter = ("status",)
    search_fields = ("experiment__name", "checkpoint_sha256", "worker")
    list_select_related = ("experiment", "run")


@admin.register(MetricPoint)
class MetricPointAdmin(ProjectScoped, ReadOnlyAdmin):
    """Logged metric values (read-only; charts live on the experiment page)."""

    project_field = "experiment__project"

    list_display = ("experiment", "run", "name", "step", "value")
    list_filter = ("name",)
    search_fields = ("experiment__name", "name")
    list_select_related = ("experiment", "run")
    # Millions of rows: counting them all on every page would make the page slow.
    show_full_result_count = False


@admin.register(ModelVersion)
class ModelVersionAdmin(ProjectScoped, ReadOnlyAdmin):
    """Registered model versions (read-only; promote and roll back on the registry page)."""

    list_display = (
        "model_name",
        "version",
        "stage",
        "traffic_pct",
        "experiment",
        "dataset_version",
        "promoted_by",
        "promoted_at",
        "serve_error",
        "project",
    )
    list_filter = ("model_name", "stage")
    search_fields = ("model_name", "experiment__name", "checkpoint_sha256")
    list_select_related = ("experiment",)


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ProjectScoped, ReadOnlyAdmin):
    """Curated datasets (hard served examples); written by the curate_dataset action."""

    list_display = (
        "model_name",
        "version",
        "strategy",
        "row_count",
        "source_version",
        "created_by",
        "created_at",
        "project",
    )
    list_filter = ("model_name", "strategy")
    list_select_related = ("source_version",)


@admin.register(DriftCheck)
class DriftCheckAdmin(ProjectScoped, ReadOnlyAdmin):
    """Drift measurements of served versions (the drift sweep writes them)."""

    project_field = "version__project"

    list_display = ("version", "score", "max_feature_psi", "window_rows", "detail", "checked_at")
    # The model names of the rows shown only (a plain filter would list every project's models).
    list_filter = (("version", admin.RelatedOnlyFieldListFilter),)
    list_select_related = ("version",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """API tokens: seen by their prefix, revoked by deleting; made with the API's token command."""

    list_display = ("name", "user", "prefix", "created_at", "last_used_at")
    search_fields = ("name", "user__username", "prefix")
    fields = ("name", "user", "prefix", "created_at", "last_used_at")
    readonly_fields = fields
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        return super().get_queryset(request).defer("token_sha256")


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    """The project's members and their roles."""

    model = Membership
    extra = 1
    raw_id_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Projects with their fair share, limits and members (staff see the projects they belong to)."""

    list_display = (
        "name",
        "slug",
        "share",
        "max_concurrent_runs",
        "max_gpus",
        "gpu_hours_per_day",
        "daily_budget_usd",
    )
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Project]:
        return visible(request.user, super().get_queryset(request), field="pk")
