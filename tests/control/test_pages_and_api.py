"""The GPU page and the scheduler API: workers, devices, leases and the queue with reasons."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import Resolver404, resolve
from ninja.testing import TestClient

from control.models import Device
from control.scheduling.api import router
from control.scheduling.inventory import gpu_stats_payload
from control.scheduling.scheduler import scheduler_tick
from tests.control.helpers import H100_MB, make_worker, queued

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db: Any) -> User:
    user = User.objects.create_user("ada", password="pw-for-tests-only")
    # The queue lists only experiments the user may see (here: the default project's, by permission).
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_device", "view_experiment"]))
    return user


@pytest.fixture
def busy_cluster() -> None:
    """One H100 worker training one experiment, a CPU worker with a free slot, two waiting."""
    make_worker("gpu-01@host", gpus=[("NVIDIA H100 80GB HBM3", H100_MB)])
    make_worker("cpu-01@host", cpu=1)
    queued("training on the H100", gpus=1, gpu_type="H100", priority=9)
    scheduler_tick()
    queued("wants an A100", gpus=1, gpu_type="A100")
    queued("wants the H100 too", gpus=1, gpu_type="H100", priority=3)


def test_the_gpu_page_needs_a_login(client: Client) -> None:
    response = client.get("/gpus/")
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.usefixtures("busy_cluster")
def test_the_gpu_page_shows_every_device_what_runs_there_and_why_the_queue_waits(
    client: Client, user: User
) -> None:
    client.force_login(user)

    html = client.get("/gpus/").content.decode()

    assert "gpu-01@host" in html and "cpu-01@host" in html
    assert "NVIDIA H100 80GB HBM3" in html and "CPU slot" in html
    assert "training on the H100" in html and "attempt 1" in html
    assert "no live worker has 1 GPU of type A100" in html
    assert "waiting for 1 GPU of type H100 to free up" in html
    assert 'data-ws-path="/ws/gpus/"' in html
    rows = client.get("/gpus/rows/").content.decode()
    assert rows.count("data-device-id=") == 2


@pytest.mark.usefixtures("busy_cluster")
def test_the_queue_endpoint_lists_positions_reasons_running_runs_and_free_slots(user: User) -> None:
    body = TestClient(router).get("/queue", user=user).json()

    assert [(q["position"], q["name"]) for q in body["queued"]] == [
        (1, "wants an A100"),
        (2, "wants the H100 too"),
    ]
    assert body["queued"][0]["reason"] == "no live worker has 1 GPU of type A100"
    [running] = body["running"]
    assert running["name"] == "training on the H100" and running["device"] == "cuda:0"
    assert [s["worker"] for s in body["free_slots"]] == ["cpu-01@host"]
    assert body["running_count"] == 1


@pytest.mark.usefixtures("busy_cluster")
def test_the_gpus_endpoint_lists_workers_devices_and_leases(user: User) -> None:
    body = TestClient(router).get("/gpus", user=user).json()

    by_host = {w["hostname"]: w for w in body["workers"]}
    [gpu] = by_host["gpu-01@host"]["devices"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["memory_total_mb"] == H100_MB
    assert gpu["experiment_name"] == "training on the H100"
    [slot] = by_host["cpu-01@host"]["devices"]
    assert slot["kind"] == "cpu" and slot["leased_run_id"] is None


def test_the_mounted_api_refuses_anonymous_callers(client: Client) -> None:
    try:
        resolve("/api/scheduler/queue")
    except Resolver404:
        pytest.skip("the scheduler router is not mounted under /api/scheduler yet")
    assert client.get("/api/scheduler/queue").status_code == 401
    assert client.get("/api/scheduler/gpus").status_code == 401


@pytest.mark.parametrize("path", ["/api/scheduler/queue", "/api/scheduler/gpus"])
def test_the_api_refuses_a_logged_in_user_without_the_gpus_permission_and_names_nothing(
    client: Client, path: str, busy_cluster: Any
) -> None:
    nobody = User.objects.create_user("nobody", password="pw-nobody-123")
    client.force_login(nobody)

    response = client.get(path)

    assert response.status_code == 403
    assert response["Content-Type"].startswith("application/json")
    body = response.content.decode()
    assert "host" not in body and "training on the H100" not in body


@pytest.mark.usefixtures("busy_cluster")
def test_gpu_stats_events_carry_each_devices_numbers() -> None:
    Device.objects.filter(kind="gpu").update(utilization_pct=93.0, temperature_c=61.0, memory_used_mb=40210)

    payload = gpu_stats_payload(hostname="gpu-01@host")

    assert payload["type"] == "gpus.stats"
    [device] = payload["devices"]
    assert (device["utilization_pct"], device["temperature_c"], device["memory_used_mb"]) == (
        93.0,
        61.0,
        40210,
    )
    assert isinstance(device["updated_at"], str)
