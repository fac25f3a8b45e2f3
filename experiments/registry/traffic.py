"""Synthetic serving traffic: held-out digits sent to a model's predict endpoint over real HTTP.

`manage.py traffic` drives a served model the way callers would: one digit per request at a
steady rate, from a thread pool, with the true label posted back as feedback for a share of
the answers. The digits come from the validation split of the serving model's own seed and
val_fraction, so the model never trained on them; `shift` brightens them (drift). Only the
command's own thread touches the database (picking the data, minting a token); the sender
threads speak HTTP and nothing else, so the generator works against any server.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from django.contrib.auth import get_user_model

from experiments.api.tokens import api_token_create
from experiments.models import ApiToken, ModelStage, ModelVersion
from experiments.registry.drift import shift_inputs
from experiments.registry.views import SERVE_PERMISSION

DEFAULT_URL = "http://127.0.0.1:8000"
# How long the first request keeps trying while the server starts or warms up (--wait).
DEFAULT_WAIT_SECONDS = 60.0
# Answers of a server that is starting, restarting or loading the model: worth asking again.
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_BACKOFF_MAX_SECONDS = 5.0
# Seed and val_fraction of the digits recipe when the serving experiment does not say.
DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.2
# A request that takes longer counts as an error; it must not hold a sender thread forever.
REQUEST_TIMEOUT_SECONDS = 10.0
# Requests still due this long after --duration ended are not sent: the run is over.
LATE_GRACE_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 1.0
# Server latencies kept for the summary's percentiles: the most recent ones.
LATENCY_SAMPLE = 10_000
MAX_RPS = 10_000.0
MAX_CONCURRENCY = 256


class TrafficError(Exception):
    """Traffic that cannot be sent, with a message a person can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class TrafficPlan:
    """What to send: to which model and server, how fast, for how long, how shifted."""

    model: str
    rps: float
    duration_s: float
    token: str = ""
    url: str = DEFAULT_URL
    shift: float = 0.0
    feedback_rate: float = 1.0
    seed: int = 0
    concurrency: int = 8
    # The first request retries for this long (math.inf: until it is answered) while the
    # server is unreachable or answers 502-504; with wait_for_model also while the model is
    # unknown (404: nothing registered yet, as in a fresh `make run`).
    wait_s: float = DEFAULT_WAIT_SECONDS
    wait_for_model: bool = False
    progress_every_s: float = PROGRESS_EVERY_SECONDS

    def validate(self) -> None:
        """Raise TrafficError naming the first option that cannot work."""
        if not self.model:
            raise TrafficError("--model: required (e.g. digits)")
        if not (math.isfinite(self.rps) and 0 < self.rps <= MAX_RPS):
            raise TrafficError(f"--rps: must be above 0 and at most {MAX_RPS:g}, got {self.rps:g}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise TrafficError(f"--duration: must be above 0 seconds, got {self.duration_s:g}")
        if not (math.isfinite(self.shift) and -1.0 <= self.shift <= 1.0):
            raise TrafficError(
                f"--shift: must be between -1 and 1 (a share of the 0-16 range), got {self.shift:g}"
            )
        if not 0.0 <= self.feedback_rate <= 1.0:
            raise TrafficError(f"--feedback-rate: must be between 0 and 1, got {self.feedback_rate:g}")
        if not (math.isfinite(self.progress_every_s) and self.progress_every_s > 0):
            raise TrafficError(f"--progress-every: must be above 0 seconds, got {self.progress_every_s:g}")
        if math.isnan(self.wait_s) or self.wait_s < 0:
            raise TrafficError(f"--wait: must be 0 or more seconds (inf: no limit), got {self.wait_s:g}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise TrafficError(f"--concurrency: must be 1 to {MAX_CONCURRENCY}, got {self.concurrency}")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TrafficError(f"--url: must be an http(s) address like {DEFAULT_URL}, got {self.url!r}")

    @property
    def planned(self) -> int:
        """Return how many requests the run sends when the server keeps up."""
        return max(1, round(self.rps * self.duration_s))

    def endpoint(self, action: str) -> str:
        """Return the URL of the model's predict or feedback endpoint."""
        return f"{self.url.rstrip('/')}/serve/{self.model}/{action}"


def default_url(env: dict[str, str] | None = None) -> str:
    """Return the server `make run` starts with the same environment (HOST, PORT), as a URL."""
    env = dict(os.environ) if env is None else env
    host = env.get("HOST", "127.0.0.1") or "127.0.0.1"
    if host in {"0.0.0.0", "::"}:  # listening everywhere: reach it on the loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{env.get('PORT', '8000') or '8000'}"


@dataclass(frozen=True)
class HeldOutDigits:
    """Digits a model never trained on (raw 0-16 pixels) with their labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    seed: int
    val_fraction: float
    source: str


def held_out_digits(*, model_name: str) -> HeldOutDigits:
    """Return the validation split of the model's serving version (its experiment's seed and val_fraction).

    That is production, else the canary (which takes every request while nothing is in
    production); without either, or an experiment config that names them, the recipe's
    defaults are used; an unknown model is left for the server to refuse.
    """
    # The digits split needs torch: only a traffic run that sends digits loads it.
    from experiments.recipes.classify import raw_split

    version = (
        ModelVersion.objects.select_related("experiment")
        .filter(model_name=model_name, stage__in=[ModelStage.PRODUCTION, ModelStage.CANARY])
        .order_by("-stage", "-version")  # "production" sorts after "canary": production first
        .first()
    )
    config: dict[str, Any] = {}
    source = f"no production or canary version of {model_name!r}: recipe defaults"
    if version is not None and version.experiment is not None:
        config = dict(version.experiment.config or {})
        source = f"{model_name} v{version.version} (experiment #{version.experiment_id})"
    seed = int(config.get("seed", DEFAULT_SEED))
    val_fraction = float(config.get("val_fraction", DEFAULT_VAL_FRACTION))
    _, _, x_val, y_val = raw_split(seed, val_fraction)
    return HeldOutDigits(x=x_val, y=y_val, seed=seed, val_fraction=val_fraction, source=source)


def traffic_token_create(*, username: str) -> tuple[ApiToken, str]:
    """Create an API token for a user who may use served models; return it with its raw secret."""
    user_model = get_user_model()
    user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
    if user is None:
        raise TrafficError(f"--user: no user {username!r} (create it, or pass --token)")
    if not user.is_active or not user.has_perm(SERVE_PERMISSION):
        raise TrafficError(f"--user: {username!r} may not use served models (needs {SERVE_PERMISSION})")
    return api_token_create(user=user, name="traffic generator")


class ServerUnreachable(Exception):
    """No HTTP answer at all: refused, reset, timed out."""


def post_json(url: str, body: dict[str, Any], *, token: str) -> tuple[int, dict[str, Any]]:
    """POST body as JSON with the bearer token; return the status and the JSON answer.

    An answer that is not JSON (another server, a proxy page) becomes {"detail": ...};
    no answer at all raises ServerUnreachable.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ServerUnreachable(str(reason) or type(exc).__name__) from None
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return status, {"detail": f"HTTP {status}, not a JSON answer (is this the Crucible server?)"}
    return status, payload


@dataclass
class TrafficStats:
    """What the run has seen so far; sender threads add to it under the lock."""

    sent: int = 0
    answered: int = 0
    errors: int = 0
    correct: int = 0
    feedback_sent: int = 0
    feedback_errors: int = 0
    answered_by_version: Counter[int] = field(default_factory=Counter)
    correct_by_version: Counter[int] = field(default_factory=Counter)
    errors_by_status: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLE))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as JSON-ready values (taken under the lock)."""
        with self.lock:
            return {
                "sent": self.sent,
                "answered": self.answered,
                "errors": self.errors,
                "feedback": self.feedback_sent,
                "versions": {str(v): n for v, n in sorted(self.answered_by_version.items())},
                "accuracy": round(self.correct / self.answered, 4) if self.answered else None,
            }


class TrafficGenerator:
    """Send a plan's requests at its rate from a pool of sender threads; report progress and a summary."""

    def __init__(
        self,
        plan: TrafficPlan,
        *,
        data: HeldOutDigits,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        plan.validate()
        self.on_wait = on_wait
        if not plan.token:
            raise TrafficError("--token: an API token is needed (or --user to mint one)")
        if len(data.x) == 0:
            raise TrafficError("no held-out digits to send")
        self.plan = plan
        self.data = data
        self.on_progress = on_progress
        self.stats = TrafficStats()
        # Drawn in the sending thread only, in order: the same options send the same digits.
        self._rng = random.Random(plan.seed)
        shifted = shift_inputs(data.x, plan.shift) if plan.shift else data.x
        self._rows: list[list[float]] = [[float(v) for v in row] for row in shifted]
        self._in_flight = threading.BoundedSemaphore(plan.concurrency)
        self._pending = 0  # submitted and not finished, under stats.lock
        self._started = 0.0
        self._next_progress = 0.0

    def run(self) -> dict[str, Any]:
        """Send the traffic; return the summary. Raise TrafficError when the first request shows it is pointless."""
        self._started = time.monotonic()
        self._next_progress = self._started + self.plan.progress_every_s
        # The first request is sent alone: a wrong URL, model or token is one clear error, not N.
        self._probe()
        deadline = self._started + self.plan.duration_s + LATE_GRACE_SECONDS
        with ThreadPoolExecutor(max_workers=self.plan.concurrency, thread_name_prefix="traffic") as pool:
            for i in range(1, self.plan.planned):
                self._maybe_progress()
                if not self._wait_until(self._started + i / self.plan.rps, deadline):
                    break
                if not self._acquire_slot(deadline):
                    break
                with self.stats.lock:
                    self.stats.sent += 1
                    self._pending += 1
                pool.submit(self._send, *self._draw())
            while self._pending_count():
                self._maybe_progress()
                time.sleep(0.02)
        return self.summary()

    def _draw(self) -> tuple[int, bool]:
        """Return the next digit to send and whether its answer gets feedback."""
        return self._rng.randrange(len(self._rows)), self._rng.random() < self.plan.feedback_rate

    def _probe(self) -> None:
        url = self.plan.endpoint("predict")
        pick, with_feedback = self._draw()
        with self.stats.lock:
            self.stats.sent += 1
        give_up = time.monotonic() + self.plan.wait_s
        delay = 0.5
        said = ""
        while True:
            try:
                status, body = post_json(url, {"features": self._rows[pick]}, token=self.plan.token)
                why = f"answered {status}: {str(body.get('detail', '')).rstrip('.')}"
                again = status in RETRY_STATUSES or (self.plan.wait_for_model and status == 404)
            except ServerUnreachable as exc:
                status, body, why, again = 0, {}, f"no answer ({exc})", True
            if not again or time.monotonic() + delay > give_up:
                break
            # Said once per kind of answer, not once per try.
            if why != said and self.on_wait is not None:
                self.on_wait(f"{self.plan.url} {why}; trying again for up to {self.plan.wait_s:g} s")
            said = why
            time.sleep(delay)
            delay = min(RETRY_BACKOFF_MAX_SECONDS, delay * 2)
        # The run's clock starts once the server answers: the wait is not part of --duration.
        self._started = time.monotonic()
        self._next_progress = self._started + self.plan.progress_every_s
        if status == 0:
            waited = f" after {self.plan.wait_s:g} s" if self.plan.wait_s else ""
            raise TrafficError(
                f"cannot reach {self.plan.url}{waited} ({why.removeprefix('no answer (').rstrip(')')}): "
                "is the server running there? (the default follows HOST and PORT, as `make run` does)"
            )
        if 400 <= status < 500 or status in RETRY_STATUSES:
            detail = body.get("detail") or json.dumps(body)[:200]
            raise TrafficError(f"POST {url} answered {status}: {detail}")
        self._record(pick, with_feedback, status, body)

    def _wait_until(self, due: float, deadline: float) -> bool:
        """Sleep until a request is due, reporting progress meanwhile; False once past the deadline."""
        while True:
            now = time.monotonic()
            if now > deadline:
                return False
            if now >= due:
                return True
            self._maybe_progress()
            time.sleep(min(due - now, 0.05))

    def _acquire_slot(self, deadline: float) -> bool:
        # Every sender busy: the server is slower than the rate; wait rather than queue unboundedly.
        while not self._in_flight.acquire(timeout=0.05):
            self._maybe_progress()
            if time.monotonic() > deadline:
                return False
        return True

    def _pending_count(self) -> int:
        with self.stats.lock:
            return self._pending

    def _maybe_progress(self) -> None:
        now = time.monotonic()
        if now < self._next_progress:
            return
        while self._next_progress <= now:
            self._next_progress += self.plan.progress_every_s
        if self.on_progress is not None:
            line = {"event": "progress", "elapsed_s": round(now - self._started, 1), **self.stats.snapshot()}
            self.on_progress(line)

    def _send(self, pick: int, with_feedback: bool) -> None:
        try:
            status, body = post_json(
                self.plan.endpoint("predict"), {"features": self._rows[pick]}, token=self.plan.token
            )
            self._record(pick, with_feedback, status, body)
        except ServerUnreachable as exc:
            self._error("unreachable", str(exc))
        except Exception as exc:  # a malformed answer is counted as an error, never lost in the pool
            self._error("client", f"{type(exc).__name__}: {exc}")
        finally:
            with self.stats.lock:
                self._pending -= 1
            self._in_flight.release()

    def _record(self, pick: int, with_feedback: bool, status: int, body: dict[str, Any]) -> None:
        """Count one predict answer; post its true label as feedback when this request draws one."""
        predictions = body.get("predictions")
        if status != 200 or not isinstance(predictions, list) or not predictions:
            self._error(str(status), str(body.get("detail", ""))[:300])
            return
        label = int(self.data.y[pick])
        version = int(body.get("version") or 0)
        right = int(predictions[0]) == label
        with self.stats.lock:
            self.stats.answered += 1
            self.stats.answered_by_version[version] += 1
            self.stats.correct += right
            self.stats.correct_by_version[version] += right
            if isinstance(body.get("latency_ms"), int | float):
                self.stats.latencies_ms.append(float(body["latency_ms"]))
        if with_feedback:
            self._feedback(str(body.get("request_id", "")), label)

    def _feedback(self, request_id: str, label: int) -> None:
        try:
            status, body = post_json(
                self.plan.endpoint("feedback"),
                {"request_id": request_id, "label": label},
                token=self.plan.token,
            )
        except ServerUnreachable as exc:
            status, body = 0, {"detail": f"unreachable: {exc}"}
        with self.stats.lock:
            if status == 200:
                self.stats.feedback_sent += 1
            else:
                self.stats.feedback_errors += 1
                self.stats.last_error = f"feedback {status}: {body.get('detail', '')}"[:300]

    def _error(self, kind: str, detail: str) -> None:
        with self.stats.lock:
            self.stats.errors += 1
            self.stats.errors_by_status[kind] += 1
            self.stats.last_error = f"{kind}: {detail}"[:300]

    def summary(self) -> dict[str, Any]:
        """Return the run's totals: counts, errors by status, accuracy per version, latency."""
        elapsed = time.monotonic() - self._started if self._started else 0.0
        stats = self.stats
        with stats.lock:
            latencies = sorted(stats.latencies_ms)
            versions = {
                str(v): {
                    "answered": n,
                    "accuracy": round(stats.correct_by_version[v] / n, 4),
                }
                for v, n in sorted(stats.answered_by_version.items())
            }
            return {
                "event": "summary",
                "model": self.plan.model,
                "url": self.plan.url,
                "data": {
                    "source": self.data.source,
                    "seed": self.data.seed,
                    "val_fraction": self.data.val_fraction,
                    "shift": self.plan.shift,
                },
                "planned": self.plan.planned,
                "sent": stats.sent,
                "not_sent": self.plan.planned - stats.sent,
                "answered": stats.answered,
                "errors": stats.errors,
                "errors_by_status": dict(stats.errors_by_status),
                "last_error": stats.last_error,
                "feedback": stats.feedback_sent,
                "feedback_errors": stats.feedback_errors,
                "accuracy": round(stats.correct / stats.answered, 4) if stats.answered else None,
                "versions": versions,
                "server_latency_ms": {
                    "p50": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
                    "p99": round(float(np.percentile(latencies, 99)), 3) if latencies else None,
                },
                "elapsed_s": round(elapsed, 2),
                "achieved_rps": round(stats.sent / elapsed, 2) if elapsed else None,
            }
