"""Reads of the execution side for pages and the API: the inventory and the queue picture."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.db.models import Prefetch
from django.utils import timezone

from control.scheduling.models import Device, Worker
from control.scheduling.scheduler import Plan, live_runs, scheduler_plan
from experiments.models import Experiment, Run
from experiments.projects import VIEW, project_ids_where


def workers_with_devices(*, user: Any) -> list[Worker]:
    """Return every worker, online first, with its devices and what each device is running.

    A device held by an experiment outside the user's projects is marked `holder_hidden`: it
    reads as "in use", naming nothing of another project.
    """
    devices = Device.objects.select_related("leased_run__experiment").order_by("kind", "index")
    workers = list(
        Worker.objects.prefetch_related(Prefetch("devices", queryset=devices)).order_by("-online", "hostname")
    )
    ids = project_ids_where(user, VIEW)
    for worker in workers:
        for device in worker.devices.all():
            run = device.leased_run
            device.holder_hidden = (
                run is not None and ids is not None and run.experiment.project_id not in ids
            )
    return workers


def device_stats(device: Device, *, worker: Worker | None = None) -> dict[str, Any]:
    """Return one device's live numbers (the GPU page and its websocket events share this shape).

    A device whose holder is hidden from the reader (`holder_hidden`) is only "in_use".
    """
    run = None if getattr(device, "holder_hidden", False) else device.leased_run
    return {
        "id": device.pk,
        "worker": (worker or device.worker).hostname,
        "kind": device.kind,
        "index": device.index,
        "name": device.name,
        "uuid": device.uuid,
        "memory_total_mb": device.memory_total_mb,
        "memory_used_mb": device.memory_used_mb,
        "utilization_pct": device.utilization_pct,
        "temperature_c": device.temperature_c,
        "power_w": device.power_w,
        "reserved": device.reserved,
        "in_use": device.leased_run_id is not None,
        "leased_run_id": run.pk if run else None,
        "experiment_id": run.experiment_id if run else None,
        "experiment_name": run.experiment.name if run else None,
        "updated_at": device.updated_at,
    }


@dataclass(frozen=True)
class QueueView:
    """The scheduler's picture: who waits (and why), who runs, what is free."""

    plan: Plan
    running: list[Run]
    now: datetime


def scheduler_queue(*, user: Any = None) -> QueueView:
    """Return the queue with positions and reasons, the live runs and the free devices.

    Given a user, only the experiments of their projects are listed (with their places in the
    shared queue).
    """
    now = timezone.now()
    plan = scheduler_plan(now=now)
    running = list(live_runs())
    ids = project_ids_where(user, VIEW) if user is not None else None
    if ids is not None:
        # One query for the queued rows' projects (the plan's rows are light, without the project).
        project_of = dict(
            Experiment.objects.filter(pk__in=[d.experiment.pk for d in plan.decisions]).values_list(
                "pk", "project_id"
            )
        )
        plan = replace(plan, decisions=[d for d in plan.decisions if project_of.get(d.experiment.pk) in ids])
        running = [r for r in running if r.experiment.project_id in ids]
    return QueueView(plan=plan, running=running, now=now)
