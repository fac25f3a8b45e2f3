"""The metric reporter: the training loop logs into memory; a background thread writes and publishes.

`log()` only appends to a deque, so a slow database or channel layer never stalls training.
The flusher writes each batch with one bulk insert that ignores conflicts on the unique
(run, name, step): a batch written twice (retried after an error) is harmless.

Latency when quiet, batches when busy: a point logged while nothing is pending wakes the
flusher at once (a slow run's points reach the page in milliseconds); points that arrive
while a write is under way mean the run is busy, and they wait for the next flush interval
so that a fast run still writes (and publishes, and lets the policies look) in large batches.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from experiments.effects import metrics_flushed_effects_run
from experiments.events import (
    FLEET_GROUP,
    MetricBatch,
    MetricPointPayload,
    StepRange,
    experiment_group,
    send_messages,
    sends_drain,
)
from experiments.models import MetricPoint
from experiments.runs.rollups import insert_many, rollups_add

logger = logging.getLogger(__name__)

# Should the database stay away for long, keep at most this many points (oldest dropped):
# training must go on, and memory must not grow without bound.
MAX_BUFFERED_POINTS = 1_000_000


def finite_or_none(value: float) -> float | None:
    """Return value as a float, or None for NaN/inf (stored as NULL; JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# A websocket frame must stay well below Daphne's 1 MiB message limit (a point is ~80
# bytes of JSON): a flusher that fell behind sends its backlog as several frames.
MAX_POINTS_PER_FRAME = 2000
# A point logged when nothing is pending is written at once, unless the last write started
# less than a quarter of the flush interval (at most 25 ms) ago: at most 40 quiet writes a
# second with the 100 ms default; a busier run is batched per interval.
QUIET_GAP_SHARE = 0.25
QUIET_GAP_MAX_SECONDS = 0.025
# The fleet page draws short sparklines: it gets only the newest points of each metric.
FLEET_POINTS_PER_METRIC = 200


def _frame(
    experiment_id: int,
    run_id: int,
    points: list[MetricPointPayload],
    ranges: dict[str, StepRange] | None = None,
) -> dict[str, Any]:
    payload: MetricBatch = {
        "type": "metrics.batch",
        "experiment_id": experiment_id,
        "run_id": run_id,
        "points": points,
    }
    if ranges is not None:
        payload["ranges"] = ranges
    return dict(payload)


class _StreamCursor:
    """The last step published per (run, metric) by this process: each frame says which step it follows.

    A page holding a metric up to step s that receives a frame following step t > s knows
    it missed (s, t] (a lost frame, a channel-layer outage) and fetches exactly that from
    the history endpoint. The cursor moves on even when a send fails: the next frame
    that gets through then shows the hole.
    """

    MAX_KEYS = 10_000  # (run, metric) pairs remembered; the oldest are forgotten

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: OrderedDict[tuple[int, str], int] = OrderedDict()

    def ranges(self, run_id: int, points: list[MetricPointPayload]) -> dict[str, StepRange]:
        """Return {metric: {after, first, last}} for a frame's points, and move the cursor past them."""
        spans: dict[str, list[int]] = {}
        for point in points:  # every published point: plain comparisons, no min()/max() calls
            step = point["step"]
            span = spans.get(point["name"])
            if span is None:
                spans[point["name"]] = [step, step]
            elif step < span[0]:
                span[0] = step
            elif step > span[1]:
                span[1] = step
        out: dict[str, StepRange] = {}
        with self._lock:
            for name, (first, last) in spans.items():
                key = (run_id, name)
                # None: this process has not published this metric of this run before.
                after = self._last.get(key)
                out[name] = {"after": after, "first": first, "last": last}
                self._last[key] = last if after is None else max(after, last)
                self._last.move_to_end(key)
            while len(self._last) > self.MAX_KEYS:
                self._last.popitem(last=False)
        return out


_cursor = _StreamCursor()


def publish_metric_batch(experiment_id: int, run_id: int, points: list[MetricPointPayload]) -> None:
    """Hand one flushed batch to the publisher and return: frames to the experiment's page, its newest points to the fleet.

    The frames are built on the publisher's thread, in the order batches were handed over (the
    step ranges follow each other), so neither a metric flush nor an ingest request waits for
    Redis. A process about to end waits with `sends_drain()` (MetricReporter.close does).
    """
    send_messages(lambda: _batch_messages(experiment_id, run_id, points), wait=False)


def _batch_messages(
    experiment_id: int, run_id: int, points: list[MetricPointPayload]
) -> list[tuple[str, dict[str, Any]]]:
    page = experiment_group(experiment_id)
    messages = []
    for start in range(0, len(points), MAX_POINTS_PER_FRAME):
        chunk = points[start : start + MAX_POINTS_PER_FRAME]
        messages.append((page, _frame(experiment_id, run_id, chunk, _cursor.ranges(run_id, chunk))))
    newest: dict[str, list[MetricPointPayload]] = {}
    for point in points:
        newest.setdefault(point["name"], []).append(point)
    fleet_points = [p for series in newest.values() for p in series[-FLEET_POINTS_PER_METRIC:]]
    messages.append((FLEET_GROUP, _frame(experiment_id, run_id, fleet_points)))
    return messages


# The columns' types as PostgreSQL arrays (the batch goes as one array per column there).
_POINT_TYPES = ("bigint", "bigint", "text", "bigint", "float8", "float8")


def _insert_sql() -> tuple[str, str]:
    table = connection.ops.quote_name(MetricPoint._meta.db_table)
    # SQLite (3.24+) and PostgreSQL both take ON CONFLICT on the unique (run, name, step).
    return (
        f"INSERT INTO {table} (run_id, experiment_id, name, step, value, wall_time)",
        "ON CONFLICT (run_id, name, step) DO NOTHING",
    )


def metrics_write(*, experiment_id: int, run_id: int, points: list[MetricPointPayload]) -> None:
    """Insert points and fold them into the roll-ups in one transaction (duplicates ignored), then publish and run hooks after commit.

    One prepared INSERT run with executemany on SQLite, one INSERT of column arrays on
    PostgreSQL (executemany cost a round trip per row there): the ORM's bulk_create spent
    most of a flush building SQL, and this is the hot path of every training run.
    """
    if not points:
        return
    rows = [(run_id, experiment_id, p["name"], p["step"], p["value"], p["wall_time"]) for p in points]
    # The points and their roll-ups commit together. Inside a caller's transaction (the ingest of a
    # batch) no savepoint: a failure here fails the caller's whole transaction, as it should.
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            head, tail = _insert_sql()
            written = insert_many(cursor, head, rows, tail, pg_types=_POINT_TYPES)
            # The chart's roll-ups change with the points, never apart from them. A short
            # count means the insert ignored some (a retried batch): rebuild what they touch.
            rollups_add(
                cursor,
                run_id=run_id,
                points=[(p["name"], p["step"], p["value"]) for p in points],
                all_new=written == len(rows),
            )
        # Publishing the batch and the policies' look at it are effects of the table (control/lifecycle.py).
        transaction.on_commit(lambda: metrics_flushed_effects_run(experiment_id, run_id, points))


class MetricReporter:
    """Buffer metric points of one run and flush them from a background thread."""

    def __init__(self, *, experiment_id: int, run_id: int, flush_seconds: float | None = None) -> None:
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.flush_seconds = float(settings.METRIC_FLUSH_SECONDS if flush_seconds is None else flush_seconds)
        # deque.append is atomic under the GIL: the training thread never takes a lock.
        self._buffer: deque[MetricPointPayload] = deque(maxlen=MAX_BUFFERED_POINTS)
        self._pending: list[MetricPointPayload] = []  # a batch whose write failed, retried first
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        # Up while the flusher waits with nothing pending: the next log() wakes it (a plain bool,
        # read without a lock; the flusher looks at the buffer again after raising it).
        self._idle = False
        # Quiet flushes start at least this far apart: a run logging a point every few
        # milliseconds is not written point by point.
        self.quiet_gap_seconds = min(self.flush_seconds * QUIET_GAP_SHARE, QUIET_GAP_MAX_SECONDS)
        self.points_written = 0
        self.flushes = 0

    @property
    def idle(self) -> bool:
        """True while the flusher waits with nothing pending (the next point is written at once)."""
        return self._idle

    def start(self) -> MetricReporter:
        """Start the flusher thread; return self."""
        self._thread = threading.Thread(target=self._loop, name=f"metrics-run-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def log(self, name: str, step: int, value: float) -> None:
        """Queue one point; returns at once (no I/O, no lock)."""
        self._buffer.append(
            {"name": str(name), "step": int(step), "value": finite_or_none(value), "wall_time": time.time()}
        )
        if self._idle:
            self._idle = False
            self._wake.set()

    def flush(self) -> int:
        """Write everything buffered now, in the caller's thread; return how many points were written."""
        with self._flush_lock:
            batch = self._pending
            self._pending = []
            while self._buffer:
                batch.append(self._buffer.popleft())
            if not batch:
                return 0
            try:
                metrics_write(experiment_id=self.experiment_id, run_id=self.run_id, points=batch)
            except Exception:
                # Keep the batch for the next flush: the insert ignores rows already there.
                self._pending = batch
                raise
            self.points_written += len(batch)
            self.flushes += 1
            return len(batch)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the flusher and write what is left (call before the run is marked finished)."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        # The last batches' frames are on their way to the pages: a worker process may end next.
        sends_drain()

    def _loop(self) -> None:
        try:
            last_start = -math.inf
            while not self._closing.is_set():
                if self._buffer or self._pending:
                    # Points came in while the last write ran (or it failed): busy, so gather a
                    # batch until one interval after that write started.
                    due = last_start + self.flush_seconds
                else:
                    self._idle = True
                    # Look again: a point appended just before the flag went up woke nobody.
                    if not self._buffer:
                        self._wake.wait()
                    self._idle = False
                    self._wake.clear()
                    due = last_start + self.quiet_gap_seconds
                pause = due - time.monotonic()
                if pause > 0:
                    self._closing.wait(pause)
                last_start = time.monotonic()
                try:
                    self.flush()
                except Exception:
                    logger.warning("metric flush for run %s failed; will retry", self.run_id, exc_info=True)
                    close_old_connections()
                    time.sleep(min(1.0, self.flush_seconds * 5))
        finally:
            # This thread opened its own connection; give it back.
            connection.close()

    def __enter__(self) -> MetricReporter:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
