"""The metric reporter: never blocks the loop, harmless replays, NaN as NULL, batches on the channel layer."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from experiments.effects import effects_install, effects_installed
from experiments.events import experiment_group
from experiments.models import Experiment, MetricPoint, Run
from experiments.runs.reporting import MetricReporter, metrics_write
from experiments.services import experiment_create
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run() -> Run:
    experiment = experiment_create(name="reporter", recipe="digits")
    return Run.objects.create(experiment=experiment, attempt=1)


@contextlib.contextmanager
def database_write_lock() -> Iterator[None]:
    """Block inserts into the metric table from another connection (reads go on): the database is slow."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        other = sqlite3.connect(settings_dict["NAME"], timeout=5, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
    else:
        import psycopg

        with psycopg.connect(
            dbname=settings_dict["NAME"], user=settings_dict["USER"], password=settings_dict["PASSWORD"],
            host=settings_dict["HOST"] or None, port=settings_dict["PORT"] or None,
        ) as pg:  # fmt: skip
            pg.execute("LOCK TABLE experiments_metricpoint IN EXCLUSIVE MODE")
            yield
            pg.rollback()


def test_log_returns_in_microseconds_while_the_database_is_locked(run: Run) -> None:
    reporter = MetricReporter(experiment_id=run.experiment_id, run_id=run.pk, flush_seconds=0.01).start()
    try:
        with database_write_lock():
            time.sleep(0.05)  # the flusher is now waiting on the lock
            durations = []
            for step in range(1, 5001):
                t0 = time.perf_counter()
                reporter.log("loss", step, 1.0 / step)
                durations.append(time.perf_counter() - t0)
            assert MetricPoint.objects.filter(run=run).count() == 0
        durations.sort()
        assert durations[len(durations) // 2] < 20e-6  # median: microseconds
        assert durations[-50] < 1e-3  # even the slowest 1 % never waited on the database
        wait_for(lambda: MetricPoint.objects.filter(run=run).count() == 5000, timeout=30, what="the flush")
    finally:
        reporter.close()


def test_a_replayed_batch_is_harmless(run: Run) -> None:
    points = [{"name": "loss", "step": s, "value": 0.5, "wall_time": time.time()} for s in range(1, 11)]

    metrics_write(experiment_id=run.experiment_id, run_id=run.pk, points=points)  # type: ignore[arg-type]
    metrics_write(experiment_id=run.experiment_id, run_id=run.pk, points=points)  # type: ignore[arg-type]

    assert MetricPoint.objects.filter(run=run).count() == 10


def test_nan_and_infinity_are_stored_as_null(run: Run) -> None:
    with MetricReporter(experiment_id=run.experiment_id, run_id=run.pk) as reporter:
        reporter.log("loss", 1, math.nan)
        reporter.log("loss", 2, math.inf)
        reporter.log("loss", 3, 0.25)

    values = dict(MetricPoint.objects.filter(run=run).values_list("step", "value"))
    assert values == {1: None, 2: None, 3: 0.25}


def test_the_flusher_writes_at_least_every_flush_interval(run: Run) -> None:
    with MetricReporter(experiment_id=run.experiment_id, run_id=run.pk, flush_seconds=0.1) as reporter:
        reporter.log("loss", 1, 1.0)
        t0 = time.monotonic()
        wait_for(
            lambda: MetricPoint.objects.filter(run=run).exists(), timeout=5, interval=0.01, what="a flush"
        )
        assert time.monotonic() - t0 < 1.0


def test_flushed_batches_reach_the_effects_of_the_table(run: Run) -> None:
    seen: list[tuple[int, int, int]] = []
    done = threading.Event()

    def hook(experiment_id: int, run_id: int, points: list[Any]) -> None:
        seen.append((experiment_id, run_id, len(points)))
        done.set()

    table = effects_installed()
    previous = effects_install(dataclasses.replace(table, metrics_flushed=(*table.metrics_flushed, hook)))
    try:
        with MetricReporter(experiment_id=run.experiment_id, run_id=run.pk) as reporter:
            reporter.log("accuracy", 1, 0.9)
        assert done.wait(5)
    finally:
        effects_install(previous)
    assert seen == [(run.experiment_id, run.pk, 1)]


def test_a_flushed_batch_is_published_to_the_experiment_group(run: Run) -> None:
    experiment: Experiment = run.experiment

    async def listen_while_flushing() -> dict[str, Any]:
        import asyncio

        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.group_add(experiment_group(experiment.pk), channel)
        try:

            def flush() -> None:
                reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
                reporter.log("loss", 7, 0.125)
                reporter.log("loss", 8, math.nan)
                reporter.flush()

            await sync_to_async(flush)()
            message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), timeout=5)
            return message
        finally:
            await layer.group_discard(experiment_group(experiment.pk), channel)

    message = async_to_sync(listen_while_flushing)()

    assert message["type"] == "metrics.batch"
    assert message["experiment_id"] == experiment.pk and message["run_id"] == run.pk
    assert [(p["name"], p["step"], p["value"]) for p in message["points"]] == [
        ("loss", 7, 0.125),
        ("loss", 8, None),
    ]


def test_a_large_backlog_reaches_the_page_in_frames_and_the_fleet_gets_only_the_newest(run: Run) -> None:
    experiment: Experiment = run.experiment
    from experiments.events import FLEET_GROUP
    from experiments.runs.reporting import FLEET_POINTS_PER_METRIC, MAX_POINTS_PER_FRAME

    async def listen_while_flushing() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        import asyncio

        layer = get_channel_layer()
        assert layer is not None
        page, fleet = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(experiment_group(experiment.pk), page)
        await layer.group_add(FLEET_GROUP, fleet)
        try:

            def flush() -> None:
                reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
                for step in range(1, 5001):
                    reporter.log("loss", step, 1.0 / step)
                reporter.log("accuracy", 5000, 0.9)
                reporter.flush()

            await sync_to_async(flush)()
            frames = [await asyncio.wait_for(layer.receive(page), timeout=5) for _ in range(3)]
            fleet_frames = [await asyncio.wait_for(layer.receive(fleet), timeout=5)]
            return frames, fleet_frames
        finally:
            await layer.group_discard(experiment_group(experiment.pk), page)
            await layer.group_discard(FLEET_GROUP, fleet)

    frames, fleet_frames = async_to_sync(listen_while_flushing)()

    assert all(len(f["points"]) <= MAX_POINTS_PER_FRAME for f in frames)
    steps = [p["step"] for f in frames for p in f["points"] if p["name"] == "loss"]
    assert steps == list(range(1, 5001))  # every point, in order, none twice
    [fleet] = fleet_frames
    fleet_loss = [p["step"] for p in fleet["points"] if p["name"] == "loss"]
    assert fleet_loss == list(range(5001 - FLEET_POINTS_PER_METRIC, 5001))
    assert [p["step"] for p in fleet["points"] if p["name"] == "accuracy"] == [5000]


def test_a_point_logged_while_nothing_is_pending_is_written_at_once_not_at_the_interval(run: Run) -> None:
    # An interval of an hour: only the quiet path can write these points while the test waits.
    with MetricReporter(experiment_id=run.experiment_id, run_id=run.pk, flush_seconds=3600) as reporter:
        reporter.log("loss", 1, 1.0)
        wait_for(lambda: MetricPoint.objects.filter(run=run).count() == 1, timeout=30, what="the first point")
        # The point is visible once its write commits, a moment before the flusher counts it and
        # waits again; a point logged in that moment counts as "busy" and waits for the interval.
        wait_for(lambda: reporter.flushes == 1 and reporter.idle, timeout=30, what="the flusher idle again")
        reporter.log("loss", 2, 0.5)  # the run went quiet again: this one goes at once too
        wait_for(
            lambda: MetricPoint.objects.filter(run=run).count() == 2, timeout=30, what="the second point"
        )
        wait_for(lambda: reporter.flushes == 2, timeout=30, what="the second write counted")
        assert reporter.points_written == 2


def test_points_that_arrive_during_a_write_wait_for_the_interval_and_go_as_one_batch(run: Run) -> None:
    batches: list[int] = []

    def hook(experiment_id: int, run_id: int, points: list[Any]) -> None:
        batches.append(len(points))

    table = effects_installed()
    previous = effects_install(dataclasses.replace(table, metrics_flushed=(*table.metrics_flushed, hook)))
    reporter = MetricReporter(experiment_id=run.experiment_id, run_id=run.pk, flush_seconds=3600).start()
    try:
        with database_write_lock():
            reporter.log("loss", 1, 1.0)
            # The flusher took the first point and is writing it (held up by the lock) ...
            wait_for(lambda: not reporter._buffer, timeout=30, what="the flusher to take the point")
            for step in range(2, 101):  # ... while the run logs on: it is busy
                reporter.log("loss", step, 1.0 / step)
        wait_for(lambda: MetricPoint.objects.filter(run=run).count() == 1, timeout=30, what="the first write")
        time.sleep(0.5)
        # Busy: the 99 wait for the interval (an hour here) instead of a write each.
        assert MetricPoint.objects.filter(run=run).count() == 1
        assert batches == [1]
    finally:
        reporter.close()
        effects_install(previous)
    assert MetricPoint.objects.filter(run=run).count() == 100
    assert batches == [1, 99]
