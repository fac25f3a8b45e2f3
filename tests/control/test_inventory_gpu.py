"""On a GPU host: NVML readings reach the inventory, and a GPU worker offers its GPUs to the scheduler."""

from __future__ import annotations

import pytest

from control.models import DeviceKind
from control.scheduling.inventory import read_gpus, worker_heartbeat

pytestmark = [pytest.mark.gpu, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _needs_nvml() -> None:
    if not read_gpus().gpus:
        pytest.skip("needs an NVIDIA GPU with NVML")


def test_nvml_reports_name_uuid_memory_and_sensors() -> None:
    gpu = read_gpus().gpus[0]
    assert gpu.name and gpu.uuid.startswith("GPU-")
    assert gpu.memory_total_mb > 1024 and 0 <= gpu.memory_used_mb <= gpu.memory_total_mb
    assert 0 <= gpu.utilization_pct <= 100
    assert gpu.temperature_c is None or 0 < gpu.temperature_c < 120


def test_a_gpu_worker_registers_each_gpu_as_a_device() -> None:
    worker, _ = worker_heartbeat(hostname="gpu@host")
    gpus = list(worker.devices.filter(kind=DeviceKind.GPU))
    assert len(gpus) == len(read_gpus().gpus)
    assert worker.nvml_error == ""
    assert gpus[0].label == "cuda:0"
