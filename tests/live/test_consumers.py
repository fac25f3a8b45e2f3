"""Websockets of the live view: who may connect, what reaches the page, and harmless bad frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from experiments.actors import Actor
from experiments.events import FLEET_GROUP, GPUS_GROUP, experiment_group, send_to_groups
from experiments.live.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from experiments.models import Experiment
from experiments.services import experiment_transition
from tests.live.conftest import Connect
from tests.live.helpers import run_for

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5


async def opened(connect: Connect, path: str, cookie: str | None) -> WebsocketCommunicator:
    """Return a connected communicator, failing the test when the server refused it."""
    communicator = await connect(path, cookie=cookie)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def close_code(connect: Connect, path: str, cookie: str | None, **kwargs: Any) -> int | None:
    """Return the code the server closed a fresh connection with (None: it stayed open)."""
    communicator = await connect(path, cookie=cookie, **kwargs)
    connected, code = await communicator.connect(timeout=TIMEOUT)
    if not connected:
        return int(code)
    message = await communicator.receive_output(timeout=TIMEOUT)
    assert message["type"] == "websocket.close"
    return int(message.get("code", 1000))


async def next_json(communicator: WebsocketCommunicator) -> dict[str, Any]:
    """Return the next frame the page receives, decoded."""
    result: dict[str, Any] = json.loads(await communicator.receive_from(timeout=TIMEOUT))
    return result


async def test_an_anonymous_visitor_is_refused_with_4401(connect: Connect, experiment: Experiment) -> None:
    assert await close_code(connect, f"/ws/experiments/{experiment.pk}/", None) == CLOSE_UNAUTHENTICATED
    assert await close_code(connect, "/ws/fleet/", None) == CLOSE_UNAUTHENTICATED
    assert await close_code(connect, "/ws/gpus/", None) == CLOSE_UNAUTHENTICATED


async def test_a_person_without_the_view_permission_is_refused_with_4403(
    connect: Connect, experiment: Experiment, stranger_cookie: str
) -> None:
    for path in (f"/ws/experiments/{experiment.pk}/", "/ws/fleet/", "/ws/gpus/"):
        assert await close_code(connect, path, stranger_cookie) == CLOSE_FORBIDDEN


async def test_an_unknown_experiment_is_refused_with_4404(connect: Connect, viewer_cookie: str) -> None:
    assert await close_code(connect, "/ws/experiments/999999/", viewer_cookie) == CLOSE_NOT_FOUND


async def test_a_foreign_origin_is_refused(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    communicator = await connect(
        f"/ws/experiments/{experiment.pk}/", cookie=viewer_cookie, origin="http://evil.example"
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert not connected


async def test_the_page_receives_a_metric_batch_sent_to_its_experiment(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    communicator = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    batch = {
        "type": "metrics.batch",
        "experiment_id": experiment.pk,
        "run_id": 1,
        "points": [
            {"name": "loss", "step": 1, "value": 2.5, "wall_time": 1.0},
            {"name": "loss", "step": 2, "value": float("nan"), "wall_time": 2.0},
        ],
    }
    await sync_to_async(send_to_groups)([experiment_group(experiment.pk)], batch)
    frame = await next_json(communicator)
    assert frame["type"] == "metrics.batch"
    assert [(p["step"], p["value"]) for p in frame["points"]] == [(1, 2.5), (2, None)]


async def test_another_experiments_batch_does_not_reach_the_page(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    other = await sync_to_async(Experiment.objects.create)(name="other", recipe="digits")
    communicator = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    batch = {"type": "metrics.batch", "experiment_id": other.pk, "run_id": 1, "points": []}
    await sync_to_async(send_to_groups)([experiment_group(other.pk)], batch)
    assert await communicator.receive_nothing(timeout=0.3)


async def test_the_page_and_the_fleet_receive_a_committed_state_change(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    page = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    fleet = await opened(connect, "/ws/fleet/", viewer_cookie)
    await sync_to_async(experiment_transition)(
        experiment_id=experiment.pk, event="queue", actor=Actor.system("test")
    )
    for communicator in (page, fleet):
        frame = await next_json(communicator)
        assert frame == {
            "type": "state.changed",
            "experiment_id": experiment.pk,
            "event": "queue",
            "source": "pending",
            "target": "queued",
            "actor": "system:test",
        }


async def test_a_new_event_type_is_forwarded_without_a_handler(connect: Connect, viewer_cookie: str) -> None:
    gpus = await opened(connect, "/ws/gpus/", viewer_cookie)
    stats = {"type": "gpus.stats", "devices": [{"id": 1, "utilization_pct": 97.0}]}
    await sync_to_async(send_to_groups)([GPUS_GROUP], stats)
    assert await next_json(gpus) == stats


async def test_ping_is_answered_with_pong(connect: Connect, viewer_cookie: str) -> None:
    communicator = await opened(connect, "/ws/fleet/", viewer_cookie)
    await communicator.send_to(text_data='{"type": "ping", "id": 7}')
    assert await next_json(communicator) == {"type": "pong", "id": 7}


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ({"text_data": "{not json"}, "invalid JSON"),
        ({"bytes_data": b"\x00\x01"}, "binary"),
        ({"text_data": '{"type": "cancel", "experiment_id": 1}'}, "unknown message type"),
        ({"text_data": "[1, 2]"}, "JSON object"),
        ({"text_data": "x" * 10_000}, "too large"),
    ],
)
async def test_a_bad_frame_gets_an_error_and_the_connection_stays_usable(
    connect: Connect, experiment: Experiment, viewer_cookie: str, frame: dict[str, Any], says: str
) -> None:
    communicator = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    await communicator.send_to(**frame)
    error = await next_json(communicator)
    assert error["type"] == "error"
    assert says in error["message"]
    # Nothing changed, and the socket still answers and still receives events.
    await communicator.send_to(text_data='{"type": "ping"}')
    assert await next_json(communicator) == {"type": "pong"}
    await sync_to_async(send_to_groups)(
        [experiment_group(experiment.pk), FLEET_GROUP],
        {
            "type": "run.progress",
            "experiment_id": experiment.pk,
            "run_id": 1,
            "progress": 0.5,
            "eta_seconds": 3.0,
            "step": 10,
        },
    )
    assert (await next_json(communicator))["progress"] == 0.5
    state = await sync_to_async(lambda: Experiment.objects.get(pk=experiment.pk).state)()
    assert state == "pending"


async def test_two_pages_watching_one_experiment_both_receive_each_batch(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    first = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    second = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    batch = {"type": "metrics.batch", "experiment_id": experiment.pk, "run_id": 1, "points": []}
    await sync_to_async(send_to_groups)([experiment_group(experiment.pk)], batch)
    results = await asyncio.gather(next_json(first), next_json(second))
    assert results == [batch, batch]


async def test_the_page_receives_what_the_reporter_flushes(
    connect: Connect, experiment: Experiment, viewer_cookie: str
) -> None:
    reporting = pytest.importorskip("experiments.runs.reporting")
    run = await sync_to_async(run_for)(experiment)
    page = await opened(connect, f"/ws/experiments/{experiment.pk}/", viewer_cookie)
    fleet = await opened(connect, "/ws/fleet/", viewer_cookie)

    def train() -> int:
        reporter = reporting.MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
        for step in range(5):
            reporter.log("loss", step, 1.0 / (step + 1))
        reporter.log("loss", 5, float("nan"))
        written: int = reporter.flush()
        return written

    assert await sync_to_async(train)() == 6
    for communicator in (page, fleet):
        frame = await next_json(communicator)
        assert frame["type"] == "metrics.batch"
        assert frame["run_id"] == run.pk
        assert [p["step"] for p in frame["points"]] == [0, 1, 2, 3, 4, 5]
        assert frame["points"][-1]["value"] is None
