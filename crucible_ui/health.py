"""GET /healthz: is the database reachable, does Redis answer, which Celery workers are alive.

Open to anyone (load balancers and `make run` poll it), so it names parts and workers but
never a URL, a password or an exception message. Every probe has a short timeout, so the
answer comes within about two seconds even when a part is down.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from crucible_ui.celery import app
from experiments.permissions import public
from experiments.recipes import RECIPES

# Seconds each probe may take; a dead part must not hold the health check up.
REDIS_TIMEOUT_SECONDS = 1.0
CELERY_PING_TIMEOUT_SECONDS = 1.0


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def database_status() -> dict[str, Any]:
    """Return whether the default database answers a trivial query, and how fast."""
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the class name says which
        return {"ok": False, "vendor": connection.vendor, "error": type(exc).__name__}
    return {"ok": True, "vendor": connection.vendor, "latency_ms": _elapsed_ms(started)}


def redis_status(url: str) -> dict[str, Any]:
    """Return whether the Redis at url (broker and channel layer) answers PING, and how fast."""
    started = time.perf_counter()
    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return {"ok": False, "error": type(exc).__name__}
    finally:
        client.close()
    return {"ok": True, "latency_ms": _elapsed_ms(started)}


def celery_status(*, broker_reachable: bool) -> dict[str, Any]:
    """Return the names of the Celery workers that answer a broadcast ping."""
    if not broker_reachable:
        # Publishing to a dead broker would retry for far longer than a health check may take.
        return {"ok": False, "workers": [], "error": "broker unreachable"}
    started = time.perf_counter()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=REDIS_TIMEOUT_SECONDS)
            replies = app.control.ping(timeout=CELERY_PING_TIMEOUT_SECONDS, connection=conn) or []
    except Exception as exc:  # kombu raises several unrelated classes for a broken broker
        return {"ok": False, "workers": [], "error": type(exc).__name__}
    workers = sorted(name for reply in replies for name in reply)
    status: dict[str, Any] = {"ok": bool(workers), "workers": workers, "latency_ms": _elapsed_ms(started)}
    if not workers:
        status["error"] = "no worker answered"
    return status


def recipes_status() -> dict[str, Any]:
    """Return how many recipes the catalog holds and which plug-ins it refused (never fatal).

    A refused plug-in leaves every other recipe usable, so it does not make the answer 503; the
    reasons (which may name files) are on the GPU page, behind a login.
    """
    refused = [problem.name or problem.ref for problem in RECIPES.problems()]
    return {"ok": not refused, "count": len(RECIPES), "refused": refused}


@public
@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Return each part's health as JSON: 200 when all are ok, 503 when any is not."""
    # Async on purpose: under ASGI every sync view shares one thread, and the Celery ping
    # waits its full second for replies; here only the quick database query takes that
    # thread, and the network probes wait in a pool of their own.
    database = await sync_to_async(database_status)()
    redis_part = await sync_to_async(redis_status, thread_sensitive=False)(settings.REDIS_URL)
    # The broker is usually this same Redis; only then does a failed PING say it is down.
    broker_is_redis_url = settings.CELERY_BROKER_URL == settings.REDIS_URL
    celery = await sync_to_async(celery_status, thread_sensitive=False)(
        broker_reachable=redis_part["ok"] or not broker_is_redis_url
    )
    ok = database["ok"] and redis_part["ok"] and celery["ok"]
    body = {
        "status": "ok" if ok else "degraded",
        "database": database,
        "redis": redis_part,
        "celery": celery,
        "recipes": await sync_to_async(recipes_status, thread_sensitive=False)(),
    }
    return JsonResponse(body, status=200 if ok else 503)
