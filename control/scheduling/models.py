"""Closing the loop: worker inventory (hosts and their GPU/CPU slots) that the scheduler leases."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Worker(models.Model):
    """A Celery worker host that trains runs; it heart-beats its devices."""

    hostname = models.CharField(
        max_length=255, unique=True, help_text="Celery node name, e.g. celery@gpu-01."
    )
    queue = models.CharField(max_length=300, help_text="The worker's own queue (worker_direct).")
    last_heartbeat = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(default=timezone.now)
    nvml_error = models.CharField(
        max_length=300, blank=True, help_text="Why NVML was unavailable, if it was."
    )
    online = models.BooleanField(
        default=True, help_text="False once heartbeats stopped; its devices are not leased then."
    )
    cpu_cores = models.PositiveIntegerField(
        default=0, help_text="CPU cores of the host, from its heartbeat (0: not reported)."
    )
    memory_total_mb = models.PositiveIntegerField(
        default=0, help_text="Host memory, from its heartbeat (0: not reported)."
    )
    stopping_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while the worker shuts down: its runs checkpoint and it takes no new ones.",
    )

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @property
    def memory_total_gb(self) -> float:
        """Return the host memory in GiB (0 when not reported)."""
        return self.memory_total_mb / 1024


class DeviceKind(models.TextChoices):
    """What a leasable slot is."""

    GPU = "gpu", "GPU"
    CPU = "cpu", "CPU slot"


class Device(models.Model):
    """One leasable slot on a worker: a GPU (read through NVML) or a CPU slot."""

    # Not stored: set by the selectors for one reader whose projects exclude the holding run.
    holder_hidden: bool = False

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="devices")
    kind = models.CharField(max_length=8, choices=DeviceKind.choices)
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=128)
    uuid = models.CharField(max_length=128, blank=True)
    memory_total_mb = models.PositiveIntegerField(default=0)
    memory_used_mb = models.PositiveIntegerField(default=0)
    utilization_pct = models.FloatField(default=0.0)
    temperature_c = models.FloatField(null=True, blank=True)
    power_w = models.FloatField(null=True, blank=True)
    reserved = models.BooleanField(
        default=False, help_text="Reserved devices are never leased by the scheduler."
    )
    # A ForeignKey, not one-to-one: a run that wants several GPUs leases several devices.
    leased_run = models.ForeignKey(
        "experiments.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="leased_devices"
    )
    leased_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["worker__hostname", "kind", "index"]
        constraints = [
            models.UniqueConstraint(fields=["worker", "kind", "index"], name="device_unique_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.worker.hostname}/{self.kind}{self.index} {self.name}"

    @property
    def label(self) -> str:
        """Return the torch device string a run on this slot trains on ("cuda:0", "cpu")."""
        return f"cuda:{self.index}" if self.kind == DeviceKind.GPU else "cpu"

    @property
    def memory_total_gb(self) -> float:
        """Return the device memory in GiB."""
        return self.memory_total_mb / 1024
