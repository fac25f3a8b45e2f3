"""The settings load and the test session has its own Redis."""

from __future__ import annotations

import redis
from django.conf import settings


def test_the_suite_runs_against_its_own_redis(redis_url: str) -> None:
    assert redis_url == settings.REDIS_URL
    assert redis.Redis.from_url(redis_url).ping()
