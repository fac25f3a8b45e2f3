"""The GPU page, its rows, /api/scheduler/gpus and /ws/gpus/ name a device's holder only to those who may see it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission

from control.scheduling.inventory import gpu_stats_payload
from control.scheduling.models import Device, DeviceKind, Worker
from experiments.events import GPUS_GROUP, send_to_groups
from tests.live.conftest import Connect, connect, session_cookie
from tests.projects.conftest import Side

__all__ = ["connect"]
TIMEOUT = 5


def _gpus_held_by(*sides: Side) -> None:
    """Give each side's user the GPU page, and lease one GPU of one worker to each side's run."""
    worker = Worker.objects.create(hostname="gpu-host", queue="gpu-host.dq2")
    for index, side in enumerate(sides):
        side.user.user_permissions.add(Permission.objects.get(codename="view_device"))
        Device.objects.create(
            worker=worker, kind=DeviceKind.GPU, index=index, name="H100", leased_run=side.run
        )


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/gpus/", "/gpus/rows/"])
def test_the_gpu_page_names_only_the_members_holders(path: str, vision: Side, nlp: Side) -> None:
    _gpus_held_by(vision, nlp)
    page = vision.client().get(path).content.decode()
    assert vision.experiment.name in page
    assert nlp.experiment.name not in page
    assert "in use" in page


@pytest.mark.django_db
def test_the_gpus_api_says_in_use_without_naming_another_projects_run(vision: Side, nlp: Side) -> None:
    _gpus_held_by(vision, nlp)
    (worker,) = vision.client().get("/api/scheduler/gpus").json()["workers"]
    rows = {d["index"]: d for d in worker["devices"]}
    assert (rows[0]["in_use"], rows[0]["experiment_id"], rows[0]["leased_run_id"]) == (
        True,
        vision.experiment.pk,
        vision.run.pk,
    )
    hidden = rows[1]
    assert (
        hidden["in_use"],
        hidden["experiment_id"],
        hidden["experiment_name"],
        hidden["leased_run_id"],
    ) == (
        True,
        None,
        None,
        None,
    )


@pytest.mark.django_db(transaction=True)
async def test_the_gpus_socket_names_only_the_members_holders(
    connect: Connect, vision: Side, nlp: Side
) -> None:
    await sync_to_async(_gpus_held_by)(vision, nlp)
    cookie = await sync_to_async(session_cookie)(vision.user)
    socket = await connect("/ws/gpus/", cookie=cookie)
    assert (await socket.connect(timeout=TIMEOUT))[0]
    payload: Any = await sync_to_async(gpu_stats_payload)(hostname="gpu-host")
    await sync_to_async(send_to_groups)([GPUS_GROUP], payload)
    frame = json.loads(await socket.receive_from(timeout=TIMEOUT))
    rows = {d["index"]: d for d in frame["devices"]}
    assert rows[0]["experiment_name"] == vision.experiment.name
    assert (rows[1]["in_use"], rows[1]["experiment_id"], rows[1]["experiment_name"]) == (True, None, None)
    assert nlp.experiment.name not in json.dumps(frame)
