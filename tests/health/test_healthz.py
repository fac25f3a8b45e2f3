"""GET /healthz: all parts up gives 200 and "ok"; any part down gives 503 and "degraded", fast."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.test import Client, override_settings

from crucible_ui.redis_server import free_port
from tests.conftest import WorkerHandle, wait_for


def _get(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_is_ok_with_the_database_redis_and_a_live_worker(
    client: Client, celery_worker: WorkerHandle
) -> None:
    def healthy() -> dict[str, Any] | None:
        status, body = _get(client)
        return body if status == 200 else None

    body = wait_for(healthy, timeout=20, interval=0.2, what="/healthz to answer 200")
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["database"]["latency_ms"] >= 0
    assert body["redis"]["ok"]
    assert body["celery"]["ok"]
    assert celery_worker.hostname in body["celery"]["workers"]


@pytest.mark.django_db
def test_it_is_degraded_without_a_worker(client: Client) -> None:
    status, body = _get(client)
    assert status == 503
    assert body["status"] == "degraded"
    assert body["database"]["ok"] and body["redis"]["ok"]
    assert body["celery"] == {
        "ok": False,
        "workers": [],
        "latency_ms": body["celery"]["latency_ms"],
        "error": "no worker answered",
    }


@pytest.mark.django_db
def test_it_is_degraded_with_503_quickly_when_redis_is_down(client: Client) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(REDIS_URL=dead, CELERY_BROKER_URL=dead):
        started = time.monotonic()
        status, body = _get(client)
        elapsed = time.monotonic() - started
    assert status == 503
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is False
    assert body["celery"]["ok"] is False
    assert elapsed < 3, "a dead Redis must not hold the health check up"


@pytest.mark.django_db
def test_it_needs_no_login_and_reveals_no_addresses_or_secrets(client: Client, redis_url: str) -> None:
    dead_port = free_port()
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{dead_port}/0"):
        status, body = _get(client)
    text = json.dumps(body)
    assert status == 503  # answered, not redirected to the login page
    assert "redis://" not in text and str(dead_port) not in text
    assert redis_url not in text
    from django.conf import settings

    assert settings.SECRET_KEY not in text


@pytest.mark.django_db
def test_it_only_answers_get(client: Client) -> None:
    assert client.post("/healthz").status_code == 405
