"""MLflow log-batch over HTTP: answered before the live publish, yet the page's socket gets every point once, in order."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from itertools import pairwise
from typing import Any

import pytest
from django.contrib.auth.models import User

from bench.common import HttpClient, WebSocketClient
from experiments.api.tokens import api_token_create
from experiments.models import MetricPoint, MlflowRun
from experiments.permissions import researcher_group_ensure
from tests.external.conftest import session_cookies

BATCHES = 12
POINTS_PER_BATCH = 500


def _call(port: int, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


@pytest.mark.django_db(transaction=True)
def test_batches_posted_back_to_back_reach_the_page_socket_each_point_once_in_order(
    live_server_port: int,
) -> None:
    user = User.objects.create_user("lin")
    user.groups.add(researcher_group_ensure())
    token = api_token_create(user=user, name="mlflow")[1]
    group = _call(live_server_port, "experiments/create", token, {"name": "live order"})["experiment_id"]
    run_id = _call(live_server_port, "runs/create", token, {"experiment_id": group})["run"]["info"]["run_id"]
    experiment_id = MlflowRun.objects.get(run_uuid=run_id).experiment_id
    total = BATCHES * POINTS_PER_BATCH
    bodies = [
        json.dumps(
            {
                "run_id": run_id,
                "metrics": [
                    {"key": "loss", "value": 1.0 / (1 + s), "timestamp": 1_700_000_000_000 + s, "step": s}
                    for s in range(b * POINTS_PER_BATCH, (b + 1) * POINTS_PER_BATCH)
                ],
            }
        ).encode()
        for b in range(BATCHES)
    ]
    frames: list[dict[str, Any]] = []
    cookies = session_cookies(user)

    async def scenario() -> None:
        socket = await WebSocketClient.connect(
            live_server_port, f"/ws/experiments/{experiment_id}/", cookies=cookies
        )
        client = HttpClient(live_server_port)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for body in bodies:  # one keep-alive connection, each answered before the next is sent
            status, answer = await client.request(
                "POST", "/api/2.0/mlflow/runs/log-batch", body=body, headers=headers
            )
            assert status == 200, answer
        await client.close()
        seen = 0
        deadline = time.monotonic() + 30
        while seen < total and time.monotonic() < deadline:
            frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            if frame.get("type") == "metrics.batch":
                frames.append(frame)
                seen += len(frame["points"])
        await socket.close()

    asyncio.run(scenario())

    steps = [p["step"] for f in frames for p in f["points"]]
    assert steps == list(range(total))  # every point once, in the order logged
    # Each frame says which step it follows: consecutive, so the page sees no gap to fill.
    ranges = [f["ranges"]["loss"] for f in frames]
    assert ranges[0]["after"] is None
    assert all(later["after"] == earlier["last"] for earlier, later in pairwise(ranges))
    assert MetricPoint.objects.filter(experiment_id=experiment_id).count() == total
