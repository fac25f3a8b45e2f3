"""JSON over HTTP with the standard library: one kept-alive connection, retried with backoff.

What may be retried and what may not: a connection refused or reset, a timeout, 5xx, 408 and 429
are the server restarting or a network blip, and the same request is sent again (every write
of the ingest API is idempotent); any other 4xx is the request's fault and is raised at once.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class CrucibleError(Exception):
    """The server refused a request for good (a 4xx other than 408/429); status and detail say why."""

    def __init__(self, status: int, detail: Any, path: str) -> None:
        self.status = status
        self.detail = detail
        self.path = path
        super().__init__(f"{path}: {status} {detail}")


class TransientError(Exception):
    """The server could not be reached or answered a status worth retrying."""


class Transport:
    """POST and GET JSON to one server with a bearer token; one connection, reopened when it breaks."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port][/prefix], got {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def with_token(self, token: str) -> Transport:
        """Return a transport to the same server with another token."""
        other = Transport.__new__(Transport)
        other.__dict__.update(self.__dict__)
        other.token = token
        other._conn = None
        other._lock = threading.Lock()
        return other

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer, or raise CrucibleError / TransientError."""
        data = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        with self._lock:
            try:
                conn = self._connection()
                conn.request(method, self.prefix + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                # The connection is in an unknown state: start the next attempt on a fresh one.
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise TransientError(f"{method} {path}: {exc!r}") from exc
            if response.getheader("Connection", "").lower() == "close" and self._conn is not None:
                self._conn.close()
                self._conn = None
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")[:500]
        if status in RETRYABLE_STATUSES:
            raise TransientError(f"{method} {path}: {status} {answer}")
        if status >= 400:
            detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
            raise CrucibleError(status, detail, path)
        return answer


def backoff_delays(*, first: float = 0.1, cap: float = 5.0) -> Callable[[], float]:
    """Return a function giving the next wait: exponential from `first` to `cap`, with full jitter."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        attempt += 1
        return random.uniform(0, min(cap, first * 2 ** (attempt - 1)))

    return next_delay


def request_with_retry(
    transport: Transport,
    method: str,
    path: str,
    body: Any = None,
    *,
    deadline: float | None = None,
    stopped: Callable[[], bool] = lambda: False,
    on_retry: Callable[[TransientError], None] = lambda exc: None,
) -> Any:
    """Send until it succeeds, waiting with backoff between attempts; raise TransientError past deadline.

    deadline: time.monotonic() after which the last transient failure is raised (None: never).
    stopped: checked between attempts; True gives up with the last failure.
    """
    delay = backoff_delays()
    while True:
        try:
            return transport.request(method, path, body)
        except TransientError as exc:
            wait = delay()
            if stopped() or (deadline is not None and time.monotonic() + wait > deadline):
                raise
            on_retry(exc)
            time.sleep(wait)
