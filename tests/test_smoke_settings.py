"""The settings load and the test session has its own Redis."""

from __future__ import annotations

import redis
from django.conf import settings


def test_the_suite_runs_against_its_own_redis(redis_url: str) -> None:
    assert redis_url == settings.REDIS_URL
    assert redis.Redis.from_url(redis_url).ping()


def test_beat_runs_every_sweep_and_each_names_a_registered_task() -> None:
    from crucible_ui.celery import app

    app.loader.import_default_modules()
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert {
        "scheduler-tick",
        "watchdog-sweep",
        "approval-timeouts",
        "checkpoint-cleanup",
        "canary-sweep",
        "drift-sweep",
    } <= set(schedule)
    for entry in schedule.values():
        assert entry["task"] in app.tasks, entry["task"]
