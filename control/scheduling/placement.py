"""Placement on a worker's host: an experiment's CPU cores and host memory must fit what is free there.

Devices (GPUs, CPU slots) are leased one by one; cores and memory are not leased, they are
counted: what a host offers (its heartbeat) less what its live runs asked for. A pass of the
scheduler takes from this count as it places experiments, so two placed in one pass never
share what only one of them fits in. A worker that reports neither (0) is not constrained.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from control.scheduling.models import Worker
from experiments.choices import LIVE_RUN_STATUSES, Executor
from experiments.models import Run


class HostRequest(Protocol):
    """What placement reads of an experiment (a model instance or the scheduler's light row)."""

    @property
    def cpu_cores(self) -> int: ...
    @property
    def host_memory_gb(self) -> float: ...


@dataclass
class HostFree:
    """What is left on one worker's host: cores and memory (None: the worker does not say)."""

    hostname: str
    cpu_cores_total: float | None
    memory_gb_total: float | None
    cpu_cores: float | None
    memory_gb: float | None


def host_capacity(workers: Iterable[Worker]) -> dict[int, HostFree]:
    """Return, per worker id, the cores and host memory its live runs leave free."""
    by_hostname = {w.hostname: w for w in workers}
    used_cores: dict[str, float] = defaultdict(float)
    used_memory: dict[str, float] = defaultdict(float)
    live = (
        Run.objects.filter(status__in=LIVE_RUN_STATUSES, worker__in=list(by_hostname))
        .exclude(experiment__executor=Executor.EXTERNAL)
        .values_list("worker", "experiment__cpu_cores", "experiment__host_memory_gb")
    )
    for hostname, run_cores, run_memory in live:
        used_cores[hostname] += float(run_cores or 0)
        used_memory[hostname] += float(run_memory or 0.0)
    capacity = {}
    for hostname, worker in by_hostname.items():
        cores = float(worker.cpu_cores) if worker.cpu_cores else None
        memory = worker.memory_total_gb if worker.memory_total_mb else None
        capacity[worker.pk] = HostFree(
            hostname=hostname,
            cpu_cores_total=cores,
            memory_gb_total=memory,
            cpu_cores=None if cores is None else cores - used_cores[hostname],
            memory_gb=None if memory is None else memory - used_memory[hostname],
        )
    return capacity


def host_fits(experiment: HostRequest, free: HostFree | None) -> bool:
    """Return True when the experiment's cores and host memory fit what is free on the host."""
    if free is None:
        return True
    if free.cpu_cores is not None and experiment.cpu_cores > free.cpu_cores + 1e-9:
        return False
    return free.memory_gb is None or experiment.host_memory_gb <= free.memory_gb + 1e-9


def host_take(capacity: dict[int, HostFree], worker_id: int, experiment: HostRequest) -> None:
    """Count the experiment's cores and memory as used on the worker (it was placed there in this pass)."""
    free = capacity.get(worker_id)
    if free is None:
        return
    if free.cpu_cores is not None:
        free.cpu_cores -= experiment.cpu_cores
    if free.memory_gb is not None:
        free.memory_gb -= experiment.host_memory_gb


def host_shortfall(
    experiment: HostRequest, capacity: dict[int, HostFree], worker_ids: Iterable[int], *, idle: bool = False
) -> str:
    """Return what the experiment misses on these workers, with the best each offers, or "" when one fits.

    E.g. "needs 8 GiB host memory; largest free: 4 GiB on w1". With idle=True the hosts are
    judged by all they have (nothing running), for an experiment no worker could ever take.
    """
    hosts = [capacity[pk] for pk in worker_ids if pk in capacity]

    def cores(h: HostFree) -> float | None:
        return h.cpu_cores_total if idle else h.cpu_cores

    def memory(h: HostFree) -> float | None:
        return h.memory_gb_total if idle else h.memory_gb

    word = "" if idle else " free"
    parts = []
    cores_known = [h for h in hosts if cores(h) is not None]
    if cores_known and all(experiment.cpu_cores > (cores(h) or 0) + 1e-9 for h in cores_known):
        best = max(cores_known, key=lambda h: cores(h) or 0)
        parts.append(
            f"needs {experiment.cpu_cores} CPU core{'s' if experiment.cpu_cores != 1 else ''}; "
            f"most{word}: {max(0.0, cores(best) or 0):g} on {best.hostname}"
        )
    memory_known = [h for h in hosts if memory(h) is not None]
    if memory_known and all(experiment.host_memory_gb > (memory(h) or 0) + 1e-9 for h in memory_known):
        best = max(memory_known, key=lambda h: memory(h) or 0)
        parts.append(
            f"needs {experiment.host_memory_gb:g} GiB host memory; "
            f"largest{word}: {max(0.0, memory(best) or 0):.3g} GiB on {best.hostname}"
        )
    if hosts and not parts and not any(host_fits(experiment, h) for h in hosts):
        # Each resource fits somewhere, but no single host has both.
        parts.append(
            f"needs {experiment.cpu_cores} CPU cores and {experiment.host_memory_gb:g} GiB host memory "
            f"on one worker; none has both{word}"
        )
    return "; ".join(parts)


def host_never_fits(
    experiment: HostRequest, capacity: dict[int, HostFree], worker_ids: Iterable[int]
) -> bool:
    """Return True when no host could take the experiment even with nothing running on it."""
    for pk in worker_ids:
        host = capacity.get(pk)
        if host is None:
            return False
        cores_ok = host.cpu_cores_total is None or experiment.cpu_cores <= host.cpu_cores_total + 1e-9
        memory_ok = host.memory_gb_total is None or experiment.host_memory_gb <= host.memory_gb_total + 1e-9
        if cores_ok and memory_ok:
            return False
    return True
