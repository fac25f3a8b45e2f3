"""Live frames say which step they follow, so a page that missed frames sees the hole and fills it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client

from experiments.live.layer import RESYNC_EVENT
from experiments.models import Experiment
from experiments.runs.reporting import MetricReporter
from tests.live.conftest import Connect
from tests.live.helpers import run_for
from tests.live.stream import StreamMirror

pytestmark = pytest.mark.django_db(transaction=True)


def history_of(experiment: Experiment, user: User) -> Any:
    """Return history(params) reading the metrics history API as user (the page's fetch)."""
    client = Client()
    client.force_login(user)

    def history(params: dict[str, str]) -> dict[str, Any]:
        response = client.get(f"/api/experiments/{experiment.pk}/metrics", params)
        assert response.status_code == 200, response.content
        return dict(response.json())

    return history


def flush(reporter: MetricReporter, steps: range, *, val_every: int = 0) -> None:
    for step in steps:
        reporter.log("loss", step, 1.0 / (step + 1))
        if val_every and step % val_every == 0:
            reporter.log("val_loss", step, 2.0 / (step + 1))
    reporter.flush()


async def test_each_frame_says_which_step_of_each_metric_it_follows(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    page = await connect(f"/ws/experiments/{experiment.pk}/", cookie=viewer_cookie)
    assert (await page.connect(timeout=5))[0]
    run = await sync_to_async(run_for)(experiment)
    reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
    await sync_to_async(flush)(reporter, range(0, 10), val_every=5)
    await sync_to_async(flush)(reporter, range(10, 20), val_every=5)
    first = json.loads(await page.receive_from(timeout=5))
    second = json.loads(await page.receive_from(timeout=5))
    assert first["ranges"] == {
        "loss": {"after": None, "first": 0, "last": 9},
        "val_loss": {"after": None, "first": 0, "last": 5},
    }
    # Validation points come less often: each metric follows its own last step.
    assert second["ranges"] == {
        "loss": {"after": 9, "first": 10, "last": 19},
        "val_loss": {"after": 5, "first": 10, "last": 15},
    }


async def test_a_page_that_missed_frames_fills_the_hole_from_the_history(
    connect: Connect, experiment: Experiment, viewer: User, viewer_cookie: str
) -> None:
    run = await sync_to_async(run_for)(experiment)
    reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
    history = await sync_to_async(history_of)(experiment, viewer)
    mirror = StreamMirror()
    page = await connect(f"/ws/experiments/{experiment.pk}/", cookie=viewer_cookie)
    assert (await page.connect(timeout=5))[0]
    await sync_to_async(flush)(reporter, range(0, 10), val_every=3)
    await sync_to_async(mirror.receive)(json.loads(await page.receive_from(timeout=5)), history)
    # The page is away (a dropped frame, a channel-layer outage): two flushes go unseen.
    await page.disconnect()
    await sync_to_async(flush)(reporter, range(10, 20), val_every=3)
    await sync_to_async(flush)(reporter, range(20, 30), val_every=3)
    page = await connect(f"/ws/experiments/{experiment.pk}/", cookie=viewer_cookie)
    assert (await page.connect(timeout=5))[0]
    await sync_to_async(flush)(reporter, range(30, 40), val_every=3)
    frame = json.loads(await page.receive_from(timeout=5))
    assert mirror.holes(frame) == ["loss", "val_loss"]
    await sync_to_async(mirror.receive)(frame, history)
    assert sorted(mirror.points["loss"]) == list(range(40))
    assert sorted(mirror.points["val_loss"]) == list(range(0, 40, 3))
    assert mirror.catch_ups == 1


async def test_a_channel_layer_reconnection_tells_the_page_to_resync(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    page = await connect(f"/ws/experiments/{experiment.pk}/", cookie=viewer_cookie)
    assert (await page.connect(timeout=5))[0]
    fleet = await connect("/ws/fleet/", cookie=viewer_cookie)
    assert (await fleet.connect(timeout=5))[0]
    # What the layer puts on every channel of the process when its Redis subscription is back
    # (tests/faults/test_live_faults.py stops a real Redis for that).
    from channels.layers import get_channel_layer

    layer: Any = get_channel_layer()
    loop_layer = layer._get_layer()
    for shard in loop_layer._shards:
        shard._reconnected()
    for communicator in (page, fleet):
        frame = json.loads(await communicator.receive_from(timeout=5))
        assert frame["type"] == "resync"
    assert RESYNC_EVENT == "layer.resync"
