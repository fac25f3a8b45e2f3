"""The run's system metrics: its process tree's CPU and memory, its GPU where it has one."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from experiments.runs.system import (
    CPU_PERCENT,
    GPU_MEM_MB,
    GPU_UTIL,
    RSS_MB,
    ProcessTreeSampler,
    StepSampler,
    gpu_index,
)

# A child that burns one core until killed (and holds ~50 MB so its memory shows).
_BURN = "x = bytearray(50 * 1024 * 1024)\nwhile True:\n    pass\n"


def _wait_for_cpu(sampler: ProcessTreeSampler, above: float) -> dict[str, float]:
    readings: dict[str, float] = {}
    for _ in range(20):
        time.sleep(0.25)
        readings = sampler.sample()
        if readings.get(CPU_PERCENT, 0.0) > above:
            break
    return readings


def test_a_child_burning_cpu_is_seen_with_its_memory_and_no_gpu_series_on_a_cpu_slot() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            f"subprocess.Popen([sys.executable, '-c', {_BURN!r}]); time.sleep(60)",
        ]
    )
    try:
        sampler = ProcessTreeSampler(pid=parent.pid, device="cpu")
        # The burner is the grandchild: only a walk of the whole tree finds it.
        readings = _wait_for_cpu(sampler, above=50.0)
        assert readings[CPU_PERCENT] > 50.0, readings
        assert readings[RSS_MB] > 50.0, readings
        # No GPU leased: the GPU series are absent, not zero (a zero reads as an idle GPU).
        assert GPU_UTIL not in readings and GPU_MEM_MB not in readings
    finally:
        for child in ProcessTreeSampler(pid=parent.pid).root.children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_an_idle_tree_reads_near_zero_cpu_but_its_memory() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sampler = ProcessTreeSampler(pid=sleeper.pid)
        time.sleep(0.5)
        readings = sampler.sample()
        assert readings[CPU_PERCENT] < 20.0, readings
        assert readings[RSS_MB] > 0, readings
    finally:
        sleeper.kill()
        sleeper.wait()


def test_samples_are_logged_at_the_runs_step_at_most_once_per_step() -> None:
    logged: list[tuple[str, int, float]] = []
    step = {"now": 0}
    sys_sampler = StepSampler(
        ProcessTreeSampler(), lambda n, s, v: logged.append((n, s, v)), lambda: step["now"]
    )
    assert sys_sampler.tick()
    assert not sys_sampler.tick()  # still at step 0: nothing logged twice at one step
    step["now"] = 7
    assert sys_sampler.tick()
    steps = sorted({s for _, s, _ in logged})
    names = {n for n, _, _ in logged}
    assert steps == [0, 7]
    assert names == {CPU_PERCENT, RSS_MB}


def test_a_leased_device_is_named_by_its_index() -> None:
    assert gpu_index("cuda:1") == 1
    assert gpu_index("cuda") == 0
    assert gpu_index("cpu") is None
    assert gpu_index("cpu:3") is None


@pytest.mark.gpu
def test_on_a_gpu_lease_the_device_utilisation_and_memory_are_read() -> None:
    torch: Any = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    block = torch.ones((256, 1024, 1024), device="cuda:0")  # 1 GiB on the device
    sampler = ProcessTreeSampler(device="cuda:0")
    try:
        readings = sampler.sample()
        assert readings[GPU_MEM_MB] >= 1024, readings
        assert 0.0 <= readings[GPU_UTIL] <= 100.0, readings
    finally:
        sampler.close()
        del block
