"""System metrics of a run: CPU and memory of its process tree (psutil), and its GPU (NVML).

Sampled on the worker every SYSTEM_METRICS_SECONDS and logged through the run's reporter under
the reserved `sys/` prefix, so that they are stored, published and fetched like any metric
(and policies may name them: "sys/rss_mb > 4000").

Step: the run's current training step, at most one sample per step. The points then line up
with the training curves on every x axis (step, wall or relative time), and the live page's
gap detection, which works per metric on steps, needs nothing new. A run that sits on one
step (loading data, a long evaluation) is sampled again once its step moves on.

The process tree is the pool process that trains and every descendant: a `script` run's
subprocess group, a DataLoader's workers. CPU is in per cent of one core summed over the
tree (400 = four busy cores), as `top` shows it. GPU figures are those of the leased device
(utilisation and memory used on it); a run on a CPU slot, or a host without NVML, logs no
GPU series at all rather than zeros that would read as an idle GPU.

No Django here: the sampler is plain Python, tested on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import psutil

logger = logging.getLogger(__name__)

SYSTEM_PREFIX = "sys/"
CPU_PERCENT = "sys/cpu_percent"
RSS_MB = "sys/rss_mb"
GPU_UTIL = "sys/gpu_util"
GPU_MEM_MB = "sys/gpu_mem_mb"
SYSTEM_METRICS: tuple[str, ...] = (CPU_PERCENT, RSS_MB, GPU_UTIL, GPU_MEM_MB)

_MB = 1024 * 1024


def is_system_metric(name: str) -> bool:
    """Return True for a name under the reserved `sys/` prefix."""
    return name.startswith(SYSTEM_PREFIX)


def gpu_index(device: str) -> int | None:
    """Return the NVML index of a leased device ("cuda:1" → 1, "cuda" → 0), None for a CPU slot."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    try:
        return int(index or 0)
    except ValueError:
        return None


class _Gpu:
    """One device read through NVML; absent (None readings) where NVML or the device is missing."""

    def __init__(self, index: int) -> None:
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # NVMLError, or no driver library on this host
            logger.info("no NVML readings for GPU %s: %s", index, exc)
            self.handle = None

    def read(self) -> dict[str, float]:
        if self.handle is None:
            return {}
        import pynvml

        out: dict[str, float] = {}
        with contextlib.suppress(pynvml.NVMLError):
            out[GPU_UTIL] = float(pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        with contextlib.suppress(pynvml.NVMLError):
            out[GPU_MEM_MB] = float(pynvml.nvmlDeviceGetMemoryInfo(self.handle).used) / _MB
        return out

    def close(self) -> None:
        if self.handle is None:
            return
        import pynvml

        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
        self.handle = None


class ProcessTreeSampler:
    """Read CPU %, RSS and (on a GPU lease) the device's utilisation and memory for one process tree."""

    def __init__(self, *, pid: int | None = None, device: str = "cpu") -> None:
        self.root = psutil.Process(pid if pid is not None else os.getpid())
        # The same Process objects from one sample to the next: cpu_percent measures since the last call.
        self._known: dict[int, psutil.Process] = {}
        index = gpu_index(device)
        self._gpu = _Gpu(index) if index is not None else None
        self.sample()  # primes the CPU counters: the first real sample covers the interval since now

    def _tree(self) -> list[psutil.Process]:
        try:
            members = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []
        tree = []
        for proc in members:
            known = self._known.get(proc.pid)
            # A recycled pid is another process: compare creation times, not only the number.
            if known is None or not _same_process(known, proc):
                self._known[proc.pid] = proc
                known = proc
            tree.append(known)
        alive = {p.pid for p in tree}
        for pid in [pid for pid in self._known if pid not in alive]:
            del self._known[pid]
        return tree

    def sample(self) -> dict[str, float]:
        """Return {metric: value} now; GPU series only where a device is leased and NVML reads it."""
        cpu = 0.0
        rss = 0
        seen = False
        for proc in self._tree():
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                seen = True
            except psutil.Error:  # ended between listing and reading
                continue
        out: dict[str, float] = {}
        if seen:
            out[CPU_PERCENT] = round(cpu, 1)
            out[RSS_MB] = round(rss / _MB, 1)
        if self._gpu is not None:
            out.update(self._gpu.read())
        return out

    def close(self) -> None:
        """Let go of NVML."""
        if self._gpu is not None:
            self._gpu.close()


def _same_process(a: psutil.Process, b: psutil.Process) -> bool:
    try:
        return bool(a.create_time() == b.create_time())
    except psutil.Error:
        return False


class StepSampler:
    """Log a sample at the run's current step, at most once per step (see the module's note on steps)."""

    def __init__(
        self,
        sampler: ProcessTreeSampler,
        log: Callable[[str, int, float], None],
        current_step: Callable[[], int],
    ) -> None:
        self.sampler = sampler
        self.log = log
        self.current_step = current_step
        self.last_step: int | None = None
        self.samples = 0

    def tick(self) -> bool:
        """Sample and log if the step moved since the last sample; return whether anything was logged."""
        step = int(self.current_step())
        readings = self.sampler.sample()
        if self.last_step is not None and step <= self.last_step:
            return False
        for name, value in readings.items():
            self.log(name, step, value)
        self.last_step = step
        self.samples += 1
        return bool(readings)
