"""The scheduler's JSON API: GET /api/scheduler/queue and GET /api/scheduler/gpus (read only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from ninja import Field, Router, Schema

from control.scheduling.scheduler import Decision
from control.scheduling.selectors import device_stats, scheduler_queue, workers_with_devices
from experiments.api.schemas import ErrorOut
from experiments.permissions import requires_permission

router = Router(tags=["scheduler"])

# The same permission as the GPUs page: the queue names experiments, runs, hosts and queues.
VIEW_PERMISSION = "control.view_device"


def _require_view(request: HttpRequest) -> None:
    """Refuse (403, JSON) a caller who may not see the GPUs page."""
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied("You may not view the scheduler queue or the GPU inventory.")


class QueuedOut(Schema):
    """A queued experiment, its place in line and why it is not running yet."""

    position: int
    experiment_id: int
    name: str
    priority_class: str
    priority: int
    urgency: float
    waiting_seconds: float
    gpus: int
    gpu_type: str
    memory_gb: float
    not_before: datetime | None
    reason: str
    expected_improvement: float | None = Field(
        None, description="Cost-aware ordering: the primary metric's expected gain over the best past run."
    )
    estimated_cost_usd: float | None = Field(
        None, description="Cost-aware ordering: one run's expected cost."
    )
    value_per_dollar: float | None = Field(None, description="expected_improvement ÷ estimated_cost_usd.")
    ordering_basis: str = Field("", description="What the expected improvement was read from.")


class RunningOut(Schema):
    """A run starting or training now, and where."""

    run_id: int
    experiment_id: int
    name: str
    attempt: int
    status: str
    worker: str
    device: str
    devices: list[int]
    progress: float
    eta_seconds: float | None
    started_at: datetime | None
    heartbeat_at: datetime | None


class SlotOut(Schema):
    """A device the scheduler could lease right now."""

    device_id: int
    worker: str
    kind: str
    index: int
    name: str
    memory_total_mb: int


class QueueOut(Schema):
    """The whole queue picture."""

    queued: list[QueuedOut]
    running: list[RunningOut]
    free_slots: list[SlotOut]
    max_concurrent_runs: int | None
    running_count: int
    ordering: str = Field(
        "",
        description="A cost policy's priority_by ordering the queue within each class; empty: priority, then age.",
    )


class DeviceOut(Schema):
    """One GPU or CPU slot with its live numbers and lease."""

    id: int
    kind: str
    index: int
    name: str
    uuid: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: float
    temperature_c: float | None
    power_w: float | None
    reserved: bool
    # Held by a run; its run and experiment are named only to those who may see that experiment.
    in_use: bool
    leased_run_id: int | None
    experiment_id: int | None
    experiment_name: str | None
    updated_at: datetime


class WorkerOut(Schema):
    """A worker host and its devices."""

    hostname: str
    queue: str
    online: bool
    last_heartbeat: datetime
    nvml_error: str
    devices: list[DeviceOut]


class GpusOut(Schema):
    """Every worker and device."""

    workers: list[WorkerOut]


def _queued_row(decision: Decision, now: datetime) -> QueuedOut:
    e = decision.experiment
    return QueuedOut(
        position=decision.position,
        experiment_id=e.pk,
        name=e.name,
        priority_class=e.priority_class,
        priority=e.priority,
        urgency=round(decision.urgency, 3),
        waiting_seconds=round((now - (e.queued_at or e.created_at)).total_seconds(), 1),
        gpus=e.gpus,
        gpu_type=e.gpu_type,
        memory_gb=e.memory_gb,
        not_before=e.not_before,
        reason=decision.reason or "next in line: a device is free",
        **_estimate_fields(decision),
    )


def _estimate_fields(decision: Decision) -> dict[str, Any]:
    estimate = decision.estimate
    if estimate is None:
        return {}
    return {
        "expected_improvement": estimate.improvement,
        "estimated_cost_usd": round(estimate.cost_usd, 4),
        "value_per_dollar": estimate.value_per_dollar,
        "ordering_basis": estimate.basis,
    }


@router.get(
    "/queue", response={200: QueueOut, 403: ErrorOut}, summary="Queue positions, running runs and free slots"
)
@requires_permission(VIEW_PERMISSION)
def queue(request: HttpRequest) -> QueueOut:
    """Return every queued experiment in scheduling order with the reason it waits."""
    _require_view(request)
    view = scheduler_queue(user=request.user)
    running = [
        RunningOut(
            run_id=r.pk,
            experiment_id=r.experiment_id,
            name=r.experiment.name,
            attempt=r.attempt,
            status=r.status,
            worker=r.worker,
            device=r.device,
            devices=[d.pk for d in r.leased_devices.all()],
            progress=r.progress,
            eta_seconds=r.eta_seconds,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
        )
        for r in view.running
    ]
    free = [
        SlotOut(
            device_id=d.pk,
            worker=d.worker.hostname,
            kind=d.kind,
            index=d.index,
            name=d.name,
            memory_total_mb=d.memory_total_mb,
        )
        for d in view.plan.free_devices
    ]
    return QueueOut(
        queued=[_queued_row(d, view.now) for d in view.plan.decisions],
        running=running,
        free_slots=free,
        max_concurrent_runs=view.plan.limit,
        running_count=view.plan.running,
        ordering=view.plan.ordering,
    )


@router.get("/gpus", response={200: GpusOut, 403: ErrorOut}, summary="Every worker and its GPUs / CPU slots")
@requires_permission(VIEW_PERMISSION)
def gpus(request: HttpRequest) -> GpusOut:
    """Return each worker with its devices' live numbers and what runs where."""
    _require_view(request)
    workers = []
    for w in workers_with_devices(user=request.user):
        devices = [DeviceOut(**device_stats(d, worker=w)) for d in w.devices.all()]
        workers.append(
            WorkerOut(
                hostname=w.hostname,
                queue=w.queue,
                online=w.online,
                last_heartbeat=w.last_heartbeat,
                nvml_error=w.nvml_error,
                devices=devices,
            )
        )
    return GpusOut(workers=workers)
