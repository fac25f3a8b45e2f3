"""Websockets keep to the user's projects: a hidden experiment's page is refused, the fleet filters."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from experiments.actors import Actor
from experiments.events import FLEET_GROUP, TRIGGERS_GROUP, send_to_groups
from experiments.live.consumers import CLOSE_NOT_FOUND
from experiments.services import experiment_transition
from tests.live.conftest import Connect, connect, session_cookie
from tests.live.test_consumers import close_code
from tests.projects.conftest import Side

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["connect"]

TIMEOUT = 5


async def test_another_projects_experiment_socket_is_refused_like_a_missing_one(
    connect: Connect, vision: Side, nlp: Side
) -> None:
    cookie = await sync_to_async(session_cookie)(vision.user)
    for experiment_id in (nlp.experiment.pk, nlp.experiment.pk + 1000):
        assert await close_code(connect, f"/ws/experiments/{experiment_id}/", cookie) == CLOSE_NOT_FOUND
    own = await connect(f"/ws/experiments/{vision.experiment.pk}/", cookie=cookie)
    assert (await own.connect(timeout=TIMEOUT))[0]


async def test_the_fleet_and_triggers_sockets_pass_on_only_the_members_experiments(
    connect: Connect, vision: Side, nlp: Side
) -> None:
    cookie = await sync_to_async(session_cookie)(vision.user)
    fleet = await connect("/ws/fleet/", cookie=cookie)
    assert (await fleet.connect(timeout=TIMEOUT))[0]
    # Another project's change first: had it been passed on, it would be the first frame read.
    await sync_to_async(experiment_transition)(
        experiment_id=nlp.experiment.pk, event="queue", actor=Actor.system("test")
    )
    await sync_to_async(experiment_transition)(
        experiment_id=vision.experiment.pk, event="queue", actor=Actor.system("test")
    )
    frame = json.loads(await fleet.receive_from(timeout=TIMEOUT))
    assert (frame["type"], frame["experiment_id"]) == ("state.changed", vision.experiment.pk)
    assert await fleet.receive_nothing(timeout=0.3)
    batch = {"type": "metrics.batch", "experiment_id": nlp.experiment.pk, "run_id": nlp.run.pk, "points": []}
    await sync_to_async(send_to_groups)([FLEET_GROUP, TRIGGERS_GROUP], batch)
    assert await fleet.receive_nothing(timeout=0.3)
