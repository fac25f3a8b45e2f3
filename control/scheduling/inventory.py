"""Worker inventory: what each worker offers (GPUs via NVML, else CPU slots), kept fresh by heartbeats.

NVML calls are safe in the worker's parent process (they do not start CUDA); torch.cuda is
never touched here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

import psutil
import pynvml
from celery.utils import worker_direct
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from control.scheduling.models import Device, DeviceKind, Worker
from control.scheduling.selectors import device_stats
from experiments.events import GPUS_GROUP, send_to_groups

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it."""

    index: int
    name: str
    uuid: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: float
    temperature_c: float | None
    power_w: float | None


@dataclass
class Inventory:
    """What a worker found on its host: GPUs (or why there are none), CPU cores and memory (0: unknown)."""

    gpus: list[GpuReading] = field(default_factory=list)
    nvml_error: str = ""
    cpu_cores: int = 0
    memory_total_mb: int = 0


def read_inventory() -> Inventory:
    """Read the GPUs through NVML and the host's CPU cores and memory (what placement checks)."""
    inventory = read_gpus()
    inventory.cpu_cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    )
    inventory.memory_total_mb = int(psutil.virtual_memory().total // (1024 * 1024))
    return inventory


def _maybe(fn: object, *args: object) -> float | None:
    """Return an optional NVML reading, or None where the device does not support it."""
    try:
        return float(fn(*args))  # type: ignore[operator]
    except pynvml.NVMLError:
        return None


def read_gpus() -> Inventory:
    """Read every GPU through NVML; when NVML is absent, say why (expected on CPU hosts)."""

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Inventory(nvml_error=f"{type(exc).__name__}: {exc}"[:300])
    try:
        readings = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = _maybe(lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu, handle)
            temp = _maybe(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
            power_mw = _maybe(pynvml.nvmlDeviceGetPowerUsage, handle)
            readings.append(
                GpuReading(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    memory_total_mb=int(mem.total // (1024 * 1024)),
                    memory_used_mb=int(mem.used // (1024 * 1024)),
                    utilization_pct=util or 0.0,
                    temperature_c=temp,
                    power_w=None if power_mw is None else power_mw / 1000.0,
                )
            )
        return Inventory(gpus=readings)
    except pynvml.NVMLError as exc:
        return Inventory(nvml_error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def worker_queue_name(hostname: str) -> str:
    """Return the name of the worker's own queue (Celery worker_direct)."""
    return str(worker_direct(hostname).name)


@transaction.atomic
def worker_heartbeat(
    *, hostname: str, inventory: Inventory | None = None, stopping: bool = False
) -> tuple[Worker, bool]:
    """Record a worker's heartbeat and its devices; return (worker, came_online).

    came_online is True for a new worker or one back from offline: it brings capacity.
    A stopping worker (its shutdown began) keeps heart-beating until its runs checkpointed,
    but the scheduler gives it no new run.
    """
    inventory = inventory if inventory is not None else read_inventory()
    now = timezone.now()
    worker, created = Worker.objects.get_or_create(
        hostname=hostname,
        defaults={"queue": worker_queue_name(hostname), "started_at": now, "last_heartbeat": now},
    )
    came_online = created or not worker.online
    Worker.objects.filter(pk=worker.pk).update(
        last_heartbeat=now,
        online=True,
        nvml_error=inventory.nvml_error,
        queue=worker_queue_name(hostname),
        cpu_cores=inventory.cpu_cores,
        memory_total_mb=inventory.memory_total_mb,
        # The worker's own word decides: set while it stops, cleared when it (re)starts.
        stopping_since=(worker.stopping_since or now) if stopping else None,
    )
    worker.refresh_from_db()
    seen: set[tuple[str, int]] = set()
    for gpu in inventory.gpus:
        seen.add((DeviceKind.GPU, gpu.index))
        Device.objects.update_or_create(
            worker=worker,
            kind=DeviceKind.GPU,
            index=gpu.index,
            defaults={
                "name": gpu.name,
                "uuid": gpu.uuid,
                "memory_total_mb": gpu.memory_total_mb,
                "memory_used_mb": gpu.memory_used_mb,
                "utilization_pct": gpu.utilization_pct,
                "temperature_c": gpu.temperature_c,
                "power_w": gpu.power_w,
                "updated_at": now,
            },
        )
    cpu_slots = settings.WORKER_CPU_SLOTS_WITH_GPUS if inventory.gpus else settings.WORKER_CPU_SLOTS
    for index in range(max(0, int(cpu_slots))):
        seen.add((DeviceKind.CPU, index))
        Device.objects.update_or_create(
            worker=worker,
            kind=DeviceKind.CPU,
            index=index,
            defaults={"name": "CPU slot", "updated_at": now},
        )
    # Devices that disappeared (a GPU fell off the bus, fewer CPU slots configured) go,
    # unless a run still holds them: the watchdog frees those first.
    for device in worker.devices.filter(leased_run__isnull=True):
        if (device.kind, device.index) not in seen:
            device.delete()
    return worker, came_online


class GpuStats(TypedDict):
    """A worker's device numbers, as the GPU page draws them."""

    type: Literal["gpus.stats"]
    worker: str
    devices: list[dict[str, Any]]


def gpu_stats_payload(*, hostname: str) -> GpuStats:
    """Return the live numbers of one worker's devices for the GPU page."""
    devices = Device.objects.filter(worker__hostname=hostname).select_related(
        "worker", "leased_run__experiment"
    )
    rows = []
    for device in devices:
        row = device_stats(device)
        row["updated_at"] = device.updated_at.isoformat()
        rows.append(row)
    return {"type": "gpus.stats", "worker": hostname, "devices": rows}


def worker_mark_stopping(*, hostname: str) -> int:
    """Mark a worker as shutting down (no new runs for it); return rows changed."""
    return Worker.objects.filter(hostname=hostname, stopping_since__isnull=True).update(
        stopping_since=timezone.now()
    )


def worker_offline(*, hostname: str) -> None:
    """Mark a worker offline at once (clean shutdown); its leases go with the next sweep."""
    Worker.objects.filter(hostname=hostname).update(online=False)


def workers_mark_offline(*, now: datetime | None = None) -> list[int]:
    """Mark workers whose heartbeats stopped as offline; return their ids."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WORKER_OFFLINE_SECONDS)
    stale = list(Worker.objects.filter(online=True, last_heartbeat__lt=cutoff).values_list("pk", flat=True))
    if stale:
        Worker.objects.filter(pk__in=stale).update(online=False)
        logger.warning("workers %s missed their heartbeats: offline", stale)
    return stale


# The worker's parent forks pool processes at any time (a replaced child). A SQLite
# connection open (or mid-transaction) in this process at fork time leaves the child with
# a copy of SQLite's lock bookkeeping, and its own connections then see "database is
# locked". So a beat holds this guard, closes its connection before letting go, and a fork
# waits for the guard.
_fork_guard = threading.Lock()
_fork_hooks_registered = False


def _register_fork_guard() -> None:
    global _fork_hooks_registered
    if not _fork_hooks_registered:
        os.register_at_fork(
            before=_fork_guard.acquire,
            after_in_parent=_fork_guard.release,
            after_in_child=_fork_guard.release,
        )
        _fork_hooks_registered = True


class HeartbeatThread(threading.Thread):
    """Heart-beat this worker's inventory every HEARTBEAT_SECONDS from the worker's parent process."""

    def __init__(self, *, hostname: str, on_online: object = None, on_start: object = None) -> None:
        super().__init__(name="crucible-worker-heartbeat", daemon=True)
        self.hostname = hostname
        self.on_online = on_online
        self.on_start = on_start  # called once, after the first beat, with the database guarded
        self.stopped = threading.Event()
        # Set (one assignment, from a signal handler) when the worker's shutdown begins.
        self.stopping = False
        self._wake = threading.Event()

    def run(self) -> None:
        """Beat until stopped; a failed beat is logged and tried again next time."""
        _register_fork_guard()
        first = True
        while True:
            came_online = False
            with _fork_guard:
                try:
                    _worker, came_online = worker_heartbeat(hostname=self.hostname, stopping=self.stopping)
                    if first and callable(self.on_start):
                        self.on_start()
                    first = False
                except Exception:
                    logger.warning("worker heartbeat failed", exc_info=True)
                finally:
                    connection.close()
            self._publish_stats()
            if came_online and callable(self.on_online):
                try:
                    self.on_online()
                except Exception:
                    logger.warning("scheduler tick after coming online failed", exc_info=True)
            self._wake.wait(float(settings.HEARTBEAT_SECONDS))
            self._wake.clear()
            if self.stopped.is_set():
                break

    def _publish_stats(self) -> None:
        """Push this worker's device numbers to open GPU pages (best effort)."""
        try:
            with _fork_guard:
                try:
                    payload = gpu_stats_payload(hostname=self.hostname)
                finally:
                    connection.close()
            if payload["devices"]:
                send_to_groups([GPUS_GROUP], dict(payload))
        except Exception:
            logger.debug("gpu stats not published", exc_info=True)

    def begin_stopping(self) -> None:
        """Beat now as a stopping worker, so the scheduler sends it nothing new (signal-safe)."""
        self.stopping = True
        self._wake.set()

    def stop(self) -> None:
        """Stop beating and mark the worker offline."""
        self.stopped.set()
        self._wake.set()
        self.join(10)
        with _fork_guard:
            try:
                worker_offline(hostname=self.hostname)
            finally:
                connection.close()
