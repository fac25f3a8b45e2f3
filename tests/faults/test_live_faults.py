"""Redis stops three times for 15 s while a run logs points and a page watches it live: nothing is lost.

Real parts only: a Daphne serving the project, a Redis of this test (the channel layer of
both Daphne and the "worker", i.e. this process's metric reporter), the test database,
and a websocket client that speaks the page's protocol (tests/live/stream.py: holes
revealed by each frame's ranges, "resync" frames, catch-up over the history endpoint,
reconnect with backoff). Asserted: every point logged is in the database, and the client
holds every one of them once the run is over.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from bench.common import WebSocketClient
from crucible_ui.redis_server import free_port, start_redis
from experiments.models import MetricPoint
from experiments.runs.reporting import MetricReporter
from experiments.services import experiment_create
from tests.live.helpers import run_for
from tests.live.stream import StreamMirror
from tests.web_server import daphne_server

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
OUTAGES = 3
OUTAGE_SECONDS = 15.0
STEP_SECONDS = 0.05  # the "training loop" logs loss every step and val_loss every 5th


class FaultRedis:
    """A Redis this test may stop and start again on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = start_redis(port=self.port, data_dir=data_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def start(self) -> None:
        self.proc = start_redis(port=self.port, data_dir=self.data_dir)


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[FaultRedis]:
    redis = FaultRedis(tmp_path / "redis")
    yield redis
    redis.stop()


@pytest.fixture
def daphne(transactional_db: Any, fault_redis: FaultRedis, tmp_path: Path) -> Iterator[int]:
    """Serve the project from Daphne on the test database, its channel layer on the fault Redis; return the port."""
    with daphne_server(
        tmp_path,
        REDIS_URL=fault_redis.url,
        CELERY_BROKER_URL=fault_redis.url,
        CELERY_RESULT_BACKEND=fault_redis.url,
    ) as port:
        yield port


class Page:
    """A live page on /ws/experiments/<id>/: reconnects with jittered backoff and catches up like live.js."""

    def __init__(self, port: int, experiment_id: int, cookies: dict[str, str]) -> None:
        self.port = port
        self.experiment_id = experiment_id
        self.cookies = cookies
        self.mirror = StreamMirror()
        self.resyncs = 0
        self.connects = 0
        self.stopping = False
        self.ws: WebSocketClient | None = None

    def history(self, params: dict[str, str]) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/experiments/{self.experiment_id}/metrics?{query}",
            headers={"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))

    async def follow(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                ws = await asyncio.wait_for(
                    WebSocketClient.connect(
                        self.port, f"/ws/experiments/{self.experiment_id}/", cookies=self.cookies
                    ),
                    15,
                )
            except (TimeoutError, OSError, RuntimeError, asyncio.IncompleteReadError):
                attempt += 1
                await asyncio.sleep(min(5.0, 0.25 * 2 ** (attempt - 1)) * (0.75 + random.random() / 2))
                continue
            self.ws = ws
            self.connects += 1
            try:
                # As the page's onopen: what was flushed before this subscription comes over HTTP.
                await asyncio.to_thread(self.mirror.catch_up, self.history)
                attempt = 0
                while True:
                    frame = json.loads(await ws.recv())
                    if frame.get("type") == "resync":
                        self.resyncs += 1
                    await asyncio.to_thread(self.mirror.receive, frame, self.history)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                if self.stopping:
                    return
                attempt += 1
                await asyncio.sleep(min(5.0, 0.25 * 2 ** (attempt - 1)) * (0.75 + random.random() / 2))

    async def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            await self.ws.close()


def training(reporter: MetricReporter, stop: threading.Event, logged: set[tuple[str, int]]) -> None:
    """Log points at a steady pace until stopped (the worker's side; flushes in the background)."""
    step = 0
    while not stop.is_set():
        reporter.log("loss", step, math.exp(-step / 500))
        logged.add(("loss", step))
        if step % 5 == 0:
            reporter.log("val_loss", step, 1.5 * math.exp(-step / 500))
            logged.add(("val_loss", step))
        step += 1
        time.sleep(STEP_SECONDS)


async def wait_until(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def test_three_redis_outages_lose_no_point_in_the_database_or_on_the_page(
    daphne: int, fault_redis: FaultRedis, settings: Any
) -> None:
    # This process publishes like a worker does: on the channel layer of the fault Redis.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "experiments.live.layer.ResyncingPubSubChannelLayer",
            "CONFIG": {"hosts": [fault_redis.url]},
        }
    }
    viewer = User.objects.create_user("viewer")
    viewer.user_permissions.add(
        Permission.objects.get(content_type__app_label="experiments", codename="view_experiment")
    )
    browser = Client()
    browser.force_login(viewer)
    cookies = {settings.SESSION_COOKIE_NAME: browser.cookies[settings.SESSION_COOKIE_NAME].value}
    experiment = experiment_create(name="through outages", recipe="digits")
    run = run_for(experiment)
    page = Page(daphne, experiment.pk, cookies)
    logged: set[tuple[str, int]] = set()
    stop = threading.Event()
    reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk).start()
    trainer = threading.Thread(target=training, args=(reporter, stop, logged), daemon=True)

    def held() -> set[tuple[str, int]]:
        return {(name, step) for name, steps in page.mirror.points.items() for step in steps}

    async def scenario() -> None:
        follower = asyncio.create_task(page.follow())
        await wait_until(lambda: page.connects >= 1, timeout=60, what="the page to connect")
        trainer.start()
        await wait_until(lambda: len(held()) > 20, timeout=60, what="live points on the page")
        try:
            for _ in range(OUTAGES):
                await asyncio.to_thread(fault_redis.stop)
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(fault_redis.start)
                before = len(held())
                # Live points flow again (a resync, a hole filled, or plain frames).
                await wait_until(
                    lambda b=before: len(held()) > b + 20, timeout=60, what="points after the outage"
                )
            stop.set()
            await asyncio.to_thread(trainer.join, 30)
            await asyncio.to_thread(reporter.close)
            await wait_until(lambda: held() >= logged, timeout=60, what="the page to hold every point")
        finally:
            stop.set()
            await page.stop()
            follower.cancel()

    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        reporter.close()

    stored = set(MetricPoint.objects.filter(run=run).values_list("name", "step"))
    assert len(logged) > 500
    assert logged - stored == set(), "points missing in the database"
    assert logged - held() == set(), "points missing on the page"
    assert held() == stored
    # The outages really cut the live stream, and the page noticed.
    assert page.resyncs + page.mirror.holes_seen >= OUTAGES
    # Shown with -s: what the page went through.
    print(
        f"{len(logged)} points logged, {len(stored)} stored, {len(held())} on the page; "
        f"socket opened {page.connects}x, {page.resyncs} resync frames, {page.mirror.holes_seen} holes, "
        f"{page.mirror.catch_ups} catch-ups"
    )
