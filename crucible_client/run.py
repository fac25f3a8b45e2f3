"""A run streamed to Crucible Control: log() appends to memory, a background thread sends batches.

What a training loop may rely on:
- `log()` does no I/O: it appends to a bounded in-memory buffer (microseconds); when the buffer
  is full, points go to a local spool file instead, so nothing is dropped however long the
  server is away;
- every FLUSH_INTERVAL (0.1 s) the sender thread posts what was logged, up to 10,000 points a
  batch, retrying with exponential backoff (jittered, at most 5 s apart) through server restarts
  and network blips; the server stores a point once per (run, name, step), so a batch sent again
  after a lost answer is never counted twice;
- each answer carries the run's control state: `should_stop()` returns it without I/O (a cancel
  from the dashboard, a policy's early stop, a run the server has ended);
- `finish()` (also at the end of a `with` block, and at interpreter exit for a run left open)
  sends everything logged, then the final status;
- a script run by a Crucible worker attaches to its own run with `Run.from_env()` (the worker
  passes CRUCIBLE_API_URL, CRUCIBLE_TOKEN and CRUCIBLE_RUN_ID): its points take the same path,
  and `should_stop()` turns true on a cancel or an early stop, when the worker also sends the
  script SIGTERM. Such a run is ended by its worker when the script exits: `finish()` only
  delivers what was logged.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from types import TracebackType
from typing import Any

from crucible_client.spool import Point, Spool
from crucible_client.transport import CrucibleError, TransientError, Transport, request_with_retry

logger = logging.getLogger("crucible_client")

FLUSH_INTERVAL = 0.1
MAX_BATCH = 10_000  # the server's bound on one batch
MAX_BUFFER = 100_000  # points held in memory before the spool file takes the rest
HEARTBEAT_INTERVAL = 5.0  # with nothing to send, say we are alive (and hear of a stop) this often
CLOSE_TIMEOUT = 300.0  # finish() waits this long for an unreachable server before giving up

__all__ = ["CrucibleError", "Run"]


class Run:
    """One run streamed to Crucible: `Run.start(...)` (an external run) or `Run.from_env()` (a worker's script run)."""

    def __init__(
        self,
        transport: Transport,
        info: dict[str, Any],
        *,
        flush_interval: float = FLUSH_INTERVAL,
        max_buffer: int = MAX_BUFFER,
        max_batch: int = MAX_BATCH,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        close_timeout: float = CLOSE_TIMEOUT,
        spool_dir: str | None = None,
        attached: bool = False,
    ) -> None:
        self.id: int = int(info["id"])
        # Attached to a run its worker executes: the worker, not this client, ends it.
        self.attached = attached
        self.experiment_id: int = int(info["experiment_id"])
        self.info = info
        self._transport = transport
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.max_batch = min(max_batch, MAX_BATCH)
        self.heartbeat_interval = heartbeat_interval
        self.close_timeout = close_timeout
        # deque.append and popleft are atomic: the training thread never takes a lock to log.
        self._buffer: deque[Point] = deque()
        self._spool = Spool(spool_dir, name=f"run-{self.id}")
        self._spilling = False
        self._spill_lock = threading.Lock()
        self._inflight: list[Point] = []  # a batch sent but not acknowledged: sent again until it is
        self._inflight_from_spool = 0
        self._logged = 0
        self._acked = 0
        self._progress = threading.Condition()
        self._stop = bool(info.get("stop", False))
        self.stop_reason: str | None = info.get("reason")
        self.errors: list[str] = []  # batches the server refused for good (never expected)
        # What delivery cost: batches acknowledged, attempts sent again, points that went to the spool.
        self.stats = {"batches": 0, "retries": 0, "spooled": 0}
        self.finished: dict[str, Any] | None = None
        self._last_contact = time.monotonic()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._give_up_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"crucible-run-{self.id}", daemon=True)
        self._thread.start()
        _open_runs.add(self)

    # --- starting ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        url: str,
        token: str,
        *,
        experiment: str | int,
        config: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        recipe: str = "",
        description: str = "",
        start_timeout: float = 60.0,
        **options: Any,
    ) -> Run:
        """Start a run of the experiment named (by name, or id) on the server at url; return it.

        token: a user's API token (`manage.py api_token <user>`); the run then writes with a token
        of its own that may touch this run only. The experiment is created (executor external)
        when no external experiment of that name can take a run. Options: flush_interval,
        max_buffer, max_batch, heartbeat_interval, close_timeout, spool_dir.
        """
        transport = Transport(url, token)
        body: dict[str, Any] = {"experiment": experiment, "recipe": recipe, "description": description}
        if config is not None:
            body["config"] = config
        if params:
            body["params"] = params
        if tags:
            body["tags"] = tags
        # A retried start after a lost answer would start a second run (the first is then
        # marked lost): the cost of a start that survives a server restart.
        info = request_with_retry(
            transport, "POST", "/api/runs", body, deadline=time.monotonic() + start_timeout
        )
        _install_exit_hooks()
        return cls(transport.with_token(info["token"]), info, **options)

    @classmethod
    def from_env(cls, *, start_timeout: float = 60.0, **options: Any) -> Run:
        """Attach to the run this process belongs to, as the worker that started it describes it.

        Reads CRUCIBLE_API_URL, CRUCIBLE_TOKEN (a token for this one run, valid while it runs) and
        CRUCIBLE_RUN_ID, which a Crucible worker sets for a `script` run; raises CrucibleError
        (status 0) naming what is missing. The run is the worker's: `finish()` delivers what was
        logged and leaves the end of the run to the worker (the script's exit code decides it).
        Options as for start().
        """
        names = ("CRUCIBLE_API_URL", "CRUCIBLE_TOKEN", "CRUCIBLE_RUN_ID")
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            raise CrucibleError(
                0,
                f"{', '.join(missing)} not set: Run.from_env() attaches to a run a Crucible worker "
                "started (set CRUCIBLE_API_URL on the worker), use Run.start() elsewhere",
                "environment",
            )
        run_id = os.environ["CRUCIBLE_RUN_ID"]
        if not run_id.isdigit():
            raise CrucibleError(0, f"CRUCIBLE_RUN_ID must be a run id, got {run_id!r}", "environment")
        transport = Transport(os.environ["CRUCIBLE_API_URL"], os.environ["CRUCIBLE_TOKEN"])
        info = request_with_retry(
            transport, "GET", f"/api/runs/{run_id}", deadline=time.monotonic() + start_timeout
        )
        _install_exit_hooks()
        return cls(transport, info, attached=True, **options)

    # --- the training loop's side (no I/O) --------------------------------------------------

    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Record one value of a metric at a step; returns at once (the sender thread posts it)."""
        point: Point = (
            name,
            int(step),
            float(value) if math.isfinite(value) else None,
            time.time() if wall_time is None else float(wall_time),
        )
        self._logged += 1
        if self._spilling or len(self._buffer) >= self.max_buffer:
            # Memory is full (the server has been away): keep the order by spooling everything
            # newer until the spool is delivered.
            with self._spill_lock:
                self._spilling = True
                self._spool.append([point])
                self.stats["spooled"] += 1
        else:
            self._buffer.append(point)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record several metrics at one step."""
        wall_time = time.time()
        for name, value in metrics.items():
            self.log(name, value, step, wall_time)

    def should_stop(self, refresh: bool = False) -> bool:
        """Return True once the server asked the run to stop (cancel, a policy's early stop, run ended).

        Without I/O: the answer to the last batch or heartbeat. refresh=True asks the server now
        (one heartbeat), e.g. in a SIGTERM handler's aftermath, to learn why the run is stopping.
        """
        if refresh and not self._stop:
            self._heartbeat()
        return self._stop

    @property
    def pending(self) -> int:
        """Return how many logged points the server has not acknowledged yet."""
        return self._logged - self._acked

    # --- synchronous calls ------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Record parameters on the run (sent now, retried through outages)."""
        request_with_retry(self._transport, "POST", f"/api/runs/{self.id}/params", {"params": params})

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the run (sent now, retried through outages)."""
        request_with_retry(self._transport, "POST", f"/api/runs/{self.id}/tags", {"tags": tags})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every point logged so far is stored on the server; return False on timeout."""
        target = self._logged
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._progress:
            while self._acked < target and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(0.05 if left is None else min(0.05, left))
                self._wake.set()
        return self._acked >= target

    def finish(
        self, status: str = "completed", final_metrics: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Send everything logged, then end the run with status (completed, failed, cancelled).

        Waits up to close_timeout for an unreachable server; what could not be sent by then stays
        in the spool file (named in the warning) and the run is left for the server to mark lost.
        """
        if self.finished is not None:
            return self.finished
        deadline = time.monotonic() + self.close_timeout
        self.flush(timeout=self.close_timeout)
        self._give_up_at = deadline
        self._closing.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if self.pending > 0:
            self._spool_leftovers()
            logger.warning(
                "crucible run %s: %s points not delivered; they are kept in %s",
                self.id,
                self.pending,
                self._spool.path,
            )
        if self.attached:
            # The worker ends its run from the script's exit code; a finish from here would be refused.
            self.finished = {"id": self.id, "status": "left to its worker", "delivered": self._acked}
            _open_runs.discard(self)
            self._transport.close()
            if self.pending == 0:
                self._spool.remove()
            return self.finished
        body = {
            "status": status,
            "final_metrics": {k: (v if math.isfinite(v) else None) for k, v in (final_metrics or {}).items()},
        }
        try:
            self.finished = request_with_retry(
                self._transport, "POST", f"/api/runs/{self.id}/finish", body, deadline=deadline
            )
        except TransientError as exc:
            logger.warning("crucible run %s: could not finish it (%s)", self.id, exc)
            self.finished = {"id": self.id, "status": "unknown", "error": str(exc)}
        except CrucibleError as exc:
            # The run ended on the server first (the watchdog marked it lost, a finish whose answer
            # was lost): its token ended with it, and there is nothing left to finish.
            logger.warning("crucible run %s: the server refused the finish (%s)", self.id, exc)
            self.finished = {"id": self.id, "status": "unknown", "error": str(exc)}
        finally:
            _open_runs.discard(self)
            self._transport.close()
        if self.pending == 0:
            self._spool.remove()
        return self.finished

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("cancelled")
        else:
            self.finish("failed")

    # --- the sender thread ------------------------------------------------------------------

    def _next_batch(self) -> list[Point]:
        if self._inflight:
            return self._inflight
        batch: list[Point] = []
        while self._buffer and len(batch) < self.max_batch:
            batch.append(self._buffer.popleft())
        from_spool: list[Point] = []
        if len(batch) < self.max_batch:
            from_spool = self._spool.take(self.max_batch - len(batch))
        self._inflight = batch + from_spool
        self._inflight_from_spool = len(from_spool)
        return self._inflight

    def _send(self, batch: list[Point]) -> bool:
        """Post one batch until the server takes it; return False when giving up (closing past its deadline)."""
        body = {"points": [{"name": n, "step": s, "value": v, "wall_time": w} for n, s, v, w in batch]}
        try:
            answer = request_with_retry(
                self._transport,
                "POST",
                f"/api/runs/{self.id}/metrics",
                body,
                deadline=self._give_up_at,
                stopped=lambda: self._give_up_at is not None and time.monotonic() > self._give_up_at,
                on_retry=self._count_retry,
            )
        except TransientError:
            return False
        except CrucibleError as exc:
            # Refused for good (the run or token is gone, a point the server cannot take): sending
            # it again would be refused again. Recorded, and the run is told to stop.
            self.errors.append(str(exc))
            logger.error("crucible run %s: batch of %s points refused: %s", self.id, len(batch), exc)
            self._stop, self.stop_reason = True, f"the server refused a batch: {exc.detail}"
            answer = None
        self._acknowledge(len(batch))
        if isinstance(answer, dict):
            self._control(answer)
        return True

    def _count_retry(self, exc: Exception) -> None:
        self.stats["retries"] += 1
        logger.info("crucible run %s: sending again (%s)", self.id, exc)

    def _acknowledge(self, count: int) -> None:
        if self._inflight_from_spool:
            self._spool.ack(self._inflight_from_spool)
        self._inflight = []
        self._inflight_from_spool = 0
        with self._spill_lock:
            if self._spilling and self._spool.count == 0:
                self._spilling = False
        self.stats["batches"] += 1
        with self._progress:
            self._acked += count
            self._progress.notify_all()
        self._last_contact = time.monotonic()

    def _control(self, answer: dict[str, Any]) -> None:
        if answer.get("stop"):
            self._stop = True
            self.stop_reason = answer.get("reason")

    def _heartbeat(self) -> None:
        try:
            answer = self._transport.request("POST", f"/api/runs/{self.id}/heartbeat", {})
        except (TransientError, CrucibleError) as exc:
            logger.info("crucible run %s: heartbeat failed (%s)", self.id, exc)
            return
        self._last_contact = time.monotonic()
        if isinstance(answer, dict):
            self._control(answer)

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.flush_interval
        while True:
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            next_tick = time.monotonic() + self.flush_interval
            sent_any = False
            while True:
                batch = self._next_batch()
                if not batch:
                    break
                if not self._send(batch):
                    return  # closing, and the server stayed away past the deadline
                sent_any = True
                if len(batch) < self.max_batch:
                    break  # caught up: wait for the next tick
            if self._closing.is_set() and not self._inflight and not self._buffer and self._spool.count == 0:
                return
            if not sent_any and time.monotonic() - self._last_contact > self.heartbeat_interval:
                self._heartbeat()

    def _spool_leftovers(self) -> None:
        """Keep what was never delivered in the spool file, for a person to find."""
        leftovers = list(self._inflight) + list(self._buffer)
        self._buffer.clear()
        self._spool.append(leftovers)


# --- interpreter exit: runs left open are flushed and finished -------------------------------

_open_runs: weakref.WeakSet[Run] = weakref.WeakSet()
_hooks_installed = False
_uncaught: list[BaseException] = []


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def remember(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _uncaught.append(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = remember
    atexit.register(_finish_open_runs)


def _finish_open_runs() -> None:
    """Finish every run the script left open: failed after an uncaught exception, else completed."""
    status = "failed" if _uncaught else "completed"
    for run in list(_open_runs):
        try:
            run.finish(status)
        except Exception:
            logger.exception("crucible run %s: could not finish it at exit", run.id)
