"""Admin of the worker inventory: workers, their devices, and the reserve toggle."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

import control.canary.admin  # registers the A/B test admin
import control.policies.admin  # noqa: F401  (registers the policy admin)
from control.canary.models import CanaryRollout
from control.scheduling.models import Device, Worker
from control.scheduling.services import device_set_reserved
from experiments.admin import ProjectScoped


class DeviceInline(admin.TabularInline):
    """A worker's devices, read only (the heartbeat writes them)."""

    model = Device
    extra = 0
    can_delete = False
    fields = ("kind", "index", "name", "memory_total_mb", "utilization_pct", "reserved", "leased_run")
    readonly_fields = ("kind", "index", "name", "memory_total_mb", "utilization_pct", "leased_run")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Devices come from heartbeats, never by hand."""
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Workers as their heartbeats report them."""

    list_display = ("hostname", "online", "last_heartbeat", "started_at", "nvml_error")
    list_filter = ("online",)
    search_fields = ("hostname",)
    readonly_fields = ("hostname", "queue", "last_heartbeat", "started_at", "nvml_error", "online")
    inlines = [DeviceInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Workers register themselves."""
        return False


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    """GPUs and CPU slots; reserving one keeps the scheduler off it."""

    list_display = (
        "__str__", "kind", "memory_total_mb", "utilization_pct", "temperature_c", "reserved", "leased_run",
    )  # fmt: skip
    list_filter = ("kind", "reserved", "worker__online")
    search_fields = ("name", "uuid", "worker__hostname")
    list_editable = ("reserved",)
    readonly_fields = (
        "worker", "kind", "index", "name", "uuid", "memory_total_mb", "memory_used_mb", "utilization_pct",
        "temperature_c", "power_w", "leased_run", "leased_at", "updated_at",
    )  # fmt: skip
    actions = ["reserve", "unreserve"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Devices come from heartbeats."""
        return False

    @admin.action(description="Reserve: the scheduler will not lease them")
    def reserve(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        """Reserve the selected devices (a running lease finishes normally)."""
        changed = sum(device_set_reserved(device_id=d.pk, reserved=True) for d in queryset)
        self.message_user(request, f"Reserved {changed} device(s).", messages.SUCCESS)

    @admin.action(description="Release the reservation")
    def unreserve(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        """Make the selected devices leasable again."""
        changed = sum(device_set_reserved(device_id=d.pk, reserved=False) for d in queryset)
        self.message_user(request, f"Released {changed} device(s).", messages.SUCCESS)


@admin.register(CanaryRollout)
class CanaryRolloutAdmin(ProjectScoped, admin.ModelAdmin):
    """Canary rollouts and what each stage saw (read-only: they move by the sweep and the buttons)."""

    project_field = "experiment__project"

    list_display = (
        "model_name",
        "candidate",
        "baseline",
        "status",
        "stage_index",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "model_name")
    list_select_related = ("candidate", "baseline")
    readonly_fields = (
        "model_name", "policy", "experiment", "candidate", "baseline", "stages", "min_requests", "stage_index",
        "stage_started_at", "stage_after_request", "status", "outcome", "history", "trigger", "started_at",
        "finished_at",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        """A rollout starts when a version is promoted."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
