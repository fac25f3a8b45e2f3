"""Builders for the scheduler tests: workers with devices, queued experiments of a given age."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from control.models import Device, DeviceKind, Worker
from experiments.actors import Actor
from experiments.models import Experiment
from experiments.services import experiment_create, experiment_transition

H100_MB = 81559
A10_MB = 23028


def make_worker(hostname: str, *, cpu: int = 0, gpus: list[tuple[str, int]] | None = None) -> Worker:
    """Return an online worker with `cpu` CPU slots and the given (name, memory MB) GPUs."""
    worker = Worker.objects.create(hostname=hostname, queue=f"{hostname}.dq2")
    for index in range(cpu):
        Device.objects.create(worker=worker, kind=DeviceKind.CPU, index=index, name="CPU slot")
    for index, (name, memory_mb) in enumerate(gpus or []):
        Device.objects.create(
            worker=worker,
            kind=DeviceKind.GPU,
            index=index,
            name=name,
            uuid=f"GPU-{hostname}-{index}",
            memory_total_mb=memory_mb,
        )
    return worker


def queued(name: str, *, waited_min: float = 0.0, **fields: Any) -> Experiment:
    """Return a queued digits experiment that entered the queue waited_min minutes ago."""
    experiment = experiment_create(name=name, recipe="digits", **fields)
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    Experiment.objects.filter(pk=experiment.pk).update(
        queued_at=timezone.now() - timedelta(minutes=waited_min)
    )
    experiment.refresh_from_db()
    return experiment
