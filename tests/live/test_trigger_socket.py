"""The Triggers page socket: who may listen, and a fired trigger reaching it and the experiment page."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User

from control.policies.engine import engine_on_complete
from control.policies.models import ActionRole, PolicyKind, PolicyMode
from experiments.live.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from tests.live.conftest import Connect, session_cookie
from tests.live.test_consumers import close_code, next_json, opened
from tests.policies.helpers import experiment_through, make_policy, record_run

pytestmark = pytest.mark.django_db(transaction=True)


def _approval_policy_and_candidate() -> int:
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9}],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        mode=PolicyMode.APPROVE,
    )
    experiment = experiment_through("queue", "start", "complete", name="candidate")
    record_run(experiment, {"accuracy": [0.97]})
    return experiment.pk


def _operator() -> str:
    user = User.objects.create_user("operator")
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_triggerevent", "view_experiment"])
    )
    return session_cookie(user)


async def test_only_people_who_may_view_triggers_can_listen(connect: Connect, stranger_cookie: str) -> None:
    assert await close_code(connect, "/ws/triggers/", None) == CLOSE_UNAUTHENTICATED
    assert await close_code(connect, "/ws/triggers/", stranger_cookie) == CLOSE_FORBIDDEN


async def test_a_fired_trigger_reaches_the_triggers_page_and_the_experiment_page(connect: Connect) -> None:
    cookie = await sync_to_async(_operator)()
    experiment_id = await sync_to_async(_approval_policy_and_candidate)()
    triggers = await opened(connect, "/ws/triggers/", cookie)
    page = await opened(connect, f"/ws/experiments/{experiment_id}/", cookie)

    await sync_to_async(engine_on_complete)(experiment_id=experiment_id)

    for communicator in (triggers, page):
        frame = await next_json(communicator)
        assert frame["type"] == "trigger.changed"
        assert (frame["policy"], frame["status"], frame["experiment_id"]) == (
            "auto_promote",
            "pending_approval",
            experiment_id,
        )
        assert frame["snapshot"]["conditions"][0]["condition"] == "latest accuracy > 0.9"
